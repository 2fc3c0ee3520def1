"""Deprecated alias of `keepstore.client.write` (block writes), kept for old imports."""

from __future__ import annotations

import warnings

from .client.wire import NOT_FOUND_STATUSES, TRANSIENT_STATUSES
from .client.write import parse_classes_confirmed, write_block

__all__ = ["NOT_FOUND_STATUSES", "TRANSIENT_STATUSES", "parse_classes_confirmed", "write_block"]

warnings.warn("keepstore.writer is deprecated: block writes live in keepstore.client.write",
              DeprecationWarning, stacklevel=2)
