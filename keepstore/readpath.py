"""Deprecated alias: this module moved to `keepstore.datasets.tree`; the old path keeps working (and warns)."""

import importlib
import sys
import warnings

warnings.warn("keepstore.readpath is deprecated; import keepstore.datasets.tree", DeprecationWarning, stacklevel=2)
# The alias is the module itself, so every name (and any patching) reaches the real one.
sys.modules[__name__] = importlib.import_module("keepstore.datasets.tree")
