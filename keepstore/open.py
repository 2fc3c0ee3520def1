"""open_store: the store the environment names (`KeepClient.from_env()`; a LocalStore when nothing is set)."""

from __future__ import annotations

import argparse

from .store import BlockStore

__all__ = ["open_store"]


def open_store(args: argparse.Namespace | None = None) -> BlockStore:
    """The store a command works on: `KeepClient.from_env()` (a LocalStore when nothing is set).

    Args:
        args: the command's parsed arguments; accepted so every command calls it alike (no
            argument changes the store today).
    """
    from .client import KeepClient  # the client pulls in pycurl; commands that never store skip it

    return KeepClient.from_env()
