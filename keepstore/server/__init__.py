"""``keep serve``: a Keep-protocol server for one machine (see ``docs/server.md``)."""

from .app import KeepServer, RequestRecord
from .faults import Fault, FaultPlan
from .volumes import Volume, parse_volume

__all__ = ["Fault", "FaultPlan", "KeepServer", "RequestRecord", "Volume", "parse_volume"]
