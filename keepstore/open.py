"""open_store: the store the environment names (`KeepClient.from_env()`; a LocalStore when nothing is set)."""

from __future__ import annotations

import argparse
from typing import Any

from .store import BlockStore

__all__ = ["CLI_DEADLINE", "open_store"]

#: Seconds a ``keep`` command's block operation may spend retrying when neither ``--deadline``,
#: ``KEEP_DEADLINE`` nor the config file says otherwise: with every service refusing, a command
#: gives up in about this long rather than in minutes.
CLI_DEADLINE = 15.0


def open_store(args: argparse.Namespace | None = None) -> BlockStore:
    """The store a command works on: `KeepClient.from_env()` (a LocalStore when nothing is set).

    Args:
        args: the command's parsed arguments. ``keep``'s own (`keepstore.cli.main`) carry the
            ``--deadline`` given (None: the configured one, else `CLI_DEADLINE`), the Ctrl-C
            cancel event (``cancel``) and the retry-notice callback (``on_retry``); parsers
            without them get the library's defaults.
    """
    from .client import KeepClient  # the client pulls in pycurl; commands that never store skip it
    from .settings import Settings

    overrides: dict[str, Any] = {}
    for name, key in (("cancel", "cancel_event"), ("on_retry", "on_retry")):
        value = getattr(args, name, None)
        if value is not None:
            overrides[key] = value
    if args is not None and hasattr(args, "deadline"):
        deadline = args.deadline
        if deadline is None and Settings.from_env().deadline is None:
            deadline = CLI_DEADLINE
        if deadline is not None:
            overrides["deadline"] = deadline
    return KeepClient.from_env(**overrides)
