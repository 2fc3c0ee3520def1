"""What the request handlers of one `KeepServer` share (`Context`), and the minimum body rate."""

from __future__ import annotations

import collections
import dataclasses

from .admission import Admission
from .auth import Permissions
from .blocks import Blocks
from .exchange import RequestRecord
from .faults import FaultPlan
from .metrics import ServerMetrics

__all__ = ["MIN_BODY_RATE", "Context"]

# A request body must average at least this rate (after one idle_timeout of grace): a client
# dripping a byte per idle_timeout would otherwise hold a thread and an admission slot for days.
MIN_BODY_RATE = 32 * 1024

@dataclasses.dataclass(frozen=True)
class Context:
    """What the handlers of one server share: its parts, handed over by `KeepServer`.

    Args:
        blocks: The volumes, without HTTP.
        permissions: The signing policy.
        admission: The request slots and connection cap.
        faults: The fault plan applied to requests.
        requests: Where each request's record goes.
        idle_timeout: Seconds a connection may stay idle.
        min_rate: The minimum average body rate, in bytes/s.
        first_byte_timeout: A new connection's wait for its first request, in seconds.
        metrics: The server's Prometheus metrics (``/metrics``), or None.
    """

    blocks: Blocks
    permissions: Permissions
    admission: Admission
    faults: FaultPlan
    requests: collections.deque[RequestRecord]
    idle_timeout: float
    min_rate: float = MIN_BODY_RATE
    first_byte_timeout: float = 10.0  # a new connection's wait for its first request
    metrics: ServerMetrics | None = None  # /metrics (keepstore.server.metrics)
