"""``keep serve``: a Keep-protocol server for one machine (see ``docs/server.md``)."""

from .app import KeepServer, RequestRecord
from .auth import Permissions
from .faults import Fault, FaultKind, FaultPlan
from .volumes import Volume, parse_volume

__all__ = ["Fault", "FaultKind", "FaultPlan", "KeepServer", "Permissions", "RequestRecord", "Volume", "parse_volume"]
