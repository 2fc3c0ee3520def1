"""The block cache `KeepClient.from_env` wires from the settings: `CacheChoice`, `cache_from_settings`."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import Any

from ..settings import Settings

__all__ = ["CacheChoice", "cache_from_settings"]


class CacheChoice(enum.Enum):
    """``from_env``'s default for ``cache=``: what the settings configure."""

    CONFIGURED = "configured"


def cache_from_settings(settings: Settings, environ: Mapping[str, str] | None,
                        choice: Any) -> tuple[Any, bool]:
    """The cache `KeepClient.from_env` uses for *choice*, and whether the client owns it."""
    if choice is None or choice is False:
        return None, False
    configured = choice is CacheChoice.CONFIGURED
    if choice is True or (configured and settings.cache_dir):
        from ..cache import DiskBlockCache

        path = os.path.expanduser(settings.default_cache_dir(environ))
        return DiskBlockCache(path, settings.cache_max_bytes), True
    if configured:
        return None, False
    return choice, False
