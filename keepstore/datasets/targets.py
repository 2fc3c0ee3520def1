"""Dataset targets as users type them: ``LOCATOR[/path]``, split into a locator and a path."""

from __future__ import annotations

from ..errors import LocatorError
from ..locator import Locator

__all__ = ["split_target"]


def split_target(text: str) -> tuple[Locator, str]:
    """``LOCATOR[/path]`` -> (locator, path inside the dataset or "").

    Raises `LocatorError` naming the whole target when the locator part is not a locator.
    """
    head, _, path = text.partition("/")
    try:
        return Locator.parse(head), path.strip("/")
    except LocatorError as exc:
        if not path:
            raise
        raise LocatorError(f"invalid locator in {text!r}: {exc}") from None
