"""keepstore: a replicating client for content-addressed Keep block stores."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import Retry, Settings, Timeout
from .errors import (
    BlockNotFound,
    CacheError,
    Cancelled,
    ConfigError,
    KeepError,
    LocatorError,
    NoServicesError,
    ReadError,
    WriteError,
)
from .local import LocalStore
from .locator import EMPTY_BLOCK, MAX_BLOCK_SIZE, Locator, sign_locator, verify_signature
from .store import BlockStore

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Heavier parts load on first use, so `import keepstore` (and the CLI) start fast.
_LAZY = {
    "KeepClient": "keepstore.client",
    "AsyncKeepClient": "keepstore.aio",
    "Batch": "keepstore.batch",
    "Service": "keepstore.services",
    "probe_order": "keepstore.services",
    "Transport": "keepstore.transport",
    "CurlTransport": "keepstore.transport",
    "MockTransport": "keepstore.transport",
    "Request": "keepstore.transport",
    "Response": "keepstore.transport",
    "BlockCache": "keepstore.cache",
    "MemoryBlockCache": "keepstore.cache",
    "DiskBlockCache": "keepstore.cache",
    "TieredBlockCache": "keepstore.cache",
    "Manifest": "keepstore.datasets.manifest",
    "DatasetWriter": "keepstore.datasets",
    "DatasetReader": "keepstore.datasets",
    "Receipt": "keepstore.datasets",
}

if TYPE_CHECKING:  # pragma: no cover
    from .client import KeepClient
    from .services import Service, probe_order


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keepstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(
    [
        "BlockNotFound",
        "BlockStore",
        "CacheError",
        "Cancelled",
        "ConfigError",
        "EMPTY_BLOCK",
        "KeepError",
        "LocalStore",
        "Locator",
        "LocatorError",
        "MAX_BLOCK_SIZE",
        "NoServicesError",
        "ReadError",
        "Retry",
        "Settings",
        "Timeout",
        "WriteError",
        "__version__",
        "sign_locator",
        "verify_signature",
        *_LAZY,
    ]
)
