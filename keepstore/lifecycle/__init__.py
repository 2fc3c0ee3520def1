"""Durability after the write: `keep check` counts and verifies replicas, `keep repair` restores them."""

from __future__ import annotations

from .check import (
    EXIT_HEALTHY,
    EXIT_MISSING,
    EXIT_UNDER_REPLICATED,
    BlockHealth,
    CheckReport,
    Replica,
    ReplicaState,
    check_blocks,
    expand_locators,
    sampled,
)
from .repair import BlockRepair, RepairReport, repair_blocks

__all__ = [
    "EXIT_HEALTHY",
    "EXIT_MISSING",
    "EXIT_UNDER_REPLICATED",
    "BlockHealth",
    "BlockRepair",
    "CheckReport",
    "RepairReport",
    "Replica",
    "ReplicaState",
    "check_blocks",
    "expand_locators",
    "repair_blocks",
    "sampled",
]
