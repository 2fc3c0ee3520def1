"""`keepstore.manifest` is `keepstore.datasets.manifest` (kept as a short, documented import path)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("keepstore.datasets.manifest")
