"""FUSE mount of a dataset (placeholder until the integrations issue lands)."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep mount`` to the command line (placeholder)."""
