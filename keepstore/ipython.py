"""``%load_ext keepstore.ipython``: the ``%keep`` line magic (see `keepstore.contrib.ipython`)."""

from __future__ import annotations

from .contrib.ipython import KeepMagics, load_ipython_extension, unload_ipython_extension

__all__ = ["KeepMagics", "load_ipython_extension", "unload_ipython_extension"]
