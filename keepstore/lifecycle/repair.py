"""keep repair: copy verified bytes of under-replicated blocks to the services that lack them."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..cache import as_block_cache
from ..errors import KeepError
from ..locator import Locator
from ..services import probe_order
from .check import EXIT_HEALTHY, EXIT_MISSING, EXIT_UNDER_REPLICATED, BlockHealth, CheckReport, short_note

if TYPE_CHECKING:  # pragma: no cover
    from ..client import KeepClient

__all__ = ["BlockRepair", "RepairReport", "repair_blocks"]

CACHE_SOURCE = "cache"


@dataclasses.dataclass(frozen=True)
class BlockRepair:
    """What repair did for one block: where its bytes came from and which services got a copy.

    Args:
        locator: The block.
        copies: Replicas wanted.
        before: Good replicas the check found.
        written_to: The services that got a new copy.
        source: Where the verified bytes came from: a service root, ``"cache"``, or None when no intact copy was
            found.
        failures: ``(where, why)`` for each source or target that failed.
        error: Why the block could not be repaired, if it could not.
    """

    locator: Locator
    copies: int
    before: int  # good replicas found by the check
    written_to: tuple[str, ...] = ()
    source: str | None = None  # a service root, "cache", or None when no intact copy was found
    failures: tuple[tuple[str, str], ...] = ()  # (where, why) for sources and targets that failed
    error: str = ""

    @property
    def after(self) -> int:
        return self.before + len(self.written_to)

    @property
    def state(self) -> str:
        if self.after >= self.copies:
            return "repaired" if self.written_to else "healthy"
        return "missing" if self.after == 0 else "under-replicated"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"locator": str(self.locator.bare()), "state": self.state, "copies": self.copies,
                               "before": self.before, "after": self.after, "source": self.source,
                               "written_to": list(self.written_to)}
        if self.failures:
            out["failures"] = [{"where": w, "why": why} for w, why in self.failures]
        if self.error:
            out["error"] = self.error
        return out


@dataclasses.dataclass(frozen=True)
class RepairReport:
    """The receipt of one repair run; `exit_code` is what `keep repair` exits with.

    Args:
        copies: Replicas wanted of every block.
        blocks: What was done for each block.
    """

    copies: int
    blocks: tuple[BlockRepair, ...]

    @property
    def exit_code(self) -> int:
        states = [b.state for b in self.blocks]
        if "missing" in states:
            return EXIT_MISSING
        return EXIT_UNDER_REPLICATED if "under-replicated" in states else EXIT_HEALTHY

    def totals(self) -> dict[str, int]:
        states = [b.state for b in self.blocks]
        return {"blocks": len(self.blocks), "repaired": states.count("repaired"),
                "replicas_written": sum(len(b.written_to) for b in self.blocks),
                "bytes_written": sum(b.locator.size * len(b.written_to) for b in self.blocks),
                "under_replicated": states.count("under-replicated"), "missing": states.count("missing")}

    def to_dict(self) -> dict[str, Any]:
        return {"copies": self.copies, "exit_code": self.exit_code, "totals": self.totals(),
                "blocks": [b.to_dict() for b in self.blocks if b.state != "healthy"]}


def repair_blocks(client: "KeepClient", report: CheckReport, *, threads: int = 4,
                  progress: Callable[[int], Any] = lambda n: None) -> RepairReport:
    """Bring every block of *report* below its copies back up, *threads* blocks at a time.

    For each: fetch the block from a good replica (in probe order), else the client's cache,
    and check its size and md5 here; then PUT it to the services, in probe order, that have
    no good copy, until the copies are met. Bytes that fail the check are never written.
    Healthy blocks are not touched, so a second run writes nothing.
    """
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keep-repair") as pool:
        futures = [pool.submit(_repair_one, client, block) for block in report.blocks]
        done = []
        for future in futures:
            done.append(future.result())
            progress(1)
    return RepairReport(report.copies, tuple(done))


def _intact(loc: Locator, data: bytes) -> bool:
    return len(data) == loc.size and hashlib.md5(data, usedforsecurity=False).hexdigest() == loc.md5


def _repair_one(client: "KeepClient", block: BlockHealth) -> BlockRepair:
    loc, good = block.locator, block.good
    if len(good) >= block.copies:
        return BlockRepair(loc, block.copies, len(good))
    failures: list[tuple[str, str]] = []
    order = probe_order(loc, client.services)
    data, source = None, None
    for service in (s for s in order if s.root in good):
        try:
            candidate = client.get_from(service, loc)
        except KeepError as exc:  # damaged or gone since the check: try the next replica
            failures.append((service.root, short_note(exc)))
            continue
        if _intact(loc, candidate):
            data, source = candidate, service.root
            break
    if data is None and client.cache is not None:
        cached = as_block_cache(client.cache).get(loc)
        if cached is not None and _intact(loc, bytes(cached)):
            data, source = bytes(cached), CACHE_SOURCE
    if data is None:
        return BlockRepair(loc, block.copies, len(good), failures=tuple(failures),
                           error=f"no intact copy of {loc.bare()} on any service or in the cache; nothing written")
    written: list[str] = []
    for service in (s for s in order if s.root not in good):
        if len(good) + len(written) >= block.copies:
            break
        try:
            client.put_to(service, data)
        except KeepError as exc:  # refused or unreachable: the next service in probe order
            failures.append((service.root, short_note(exc)))
            continue
        written.append(service.root)
    error = "" if len(good) + len(written) >= block.copies else (
        f"{loc.bare()}: {len(good) + len(written)} of {block.copies} copies; no more services to write to")
    return BlockRepair(loc, block.copies, len(good), tuple(written), source, tuple(failures), error)
