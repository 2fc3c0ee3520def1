"""Deprecated alias: the dataset commands moved to `keepstore.cli.datasets` (the old path warns)."""

import importlib
import sys
import warnings

warnings.warn("keepstore.cli_datasets is deprecated; import keepstore.cli.datasets "
              "(split_target: keepstore.datasets.targets)", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("keepstore.cli.datasets")
