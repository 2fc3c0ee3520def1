"""Deprecated alias: the test doubles moved to `keepstore.testing.doubles`."""

import warnings

from .testing.doubles import *  # noqa: F403  (the alias re-exports the module's public names)
from .testing.doubles import __all__  # noqa: F401

warnings.warn("keepstore.doubles is deprecated; import keepstore.testing.doubles (or keepstore.testing)",
              DeprecationWarning, stacklevel=2)
