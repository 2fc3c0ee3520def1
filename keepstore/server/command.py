"""The ``keep serve`` sub-command."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep serve`` to the command line (placeholder until the server lands)."""
