"""Argument types and secret files the ``keep`` commands share: numbers, seconds, class lists."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import ConfigError

__all__ = ["non_negative_int", "non_negative_seconds", "positive_int", "positive_seconds", "read_secret",
           "storage_classes"]


def storage_classes(text: str) -> list[str]:
    """``A,B`` -> ``["A", "B"]``; at least one name."""
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if not classes:
        raise argparse.ArgumentTypeError("need at least one storage class name")
    return classes


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {'0 or more' if minimum == 0 else f'at least {minimum}'}")
    return value


def positive_int(text: str) -> int:
    """A whole number, at least 1."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number, 0 or more."""
    return _whole(text, 0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds (and finite)")
    return value


def non_negative_seconds(text: str) -> float:
    """Seconds, 0 or more (finite)."""
    return _seconds(text)


def positive_seconds(text: str) -> float:
    """Seconds, more than 0 (finite)."""
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def read_secret(path: Path, what: str) -> str:
    """The stripped text of a key or token file; `ConfigError` (never quoting it) when unreadable or empty."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"the {what} file {path} is empty")
    return text
