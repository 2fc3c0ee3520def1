"""KeepClient: the replicating, verifying client for Keep services (placeholder until issue 4)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .config import Settings
from .errors import NoServicesError
from .local import LocalStore
from .store import BlockStore

__all__ = ["KeepClient"]


class KeepClient:
    """Placeholder: only `from_env()` in local mode works so far."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> BlockStore:
        settings = Settings.from_env(environ, **overrides)
        if settings.mode == "local":
            return LocalStore(os.path.expanduser(settings.store_path))
        raise NoServicesError("the HTTP client is not built yet")
