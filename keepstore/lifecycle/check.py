"""keep check: count (and optionally read and verify) every replica of every block asked about."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..datasets.manifest import Manifest, ManifestError
from ..errors import BlockNotFound, KeepError, ReadError
from ..local import LocalStore
from ..locator import EMPTY_BLOCK, Locator
from ..services import Service, probe_order
from ..store import BlockStore

if TYPE_CHECKING:  # pragma: no cover
    from ..client import KeepClient

__all__ = ["EXIT_HEALTHY", "EXIT_MISSING", "EXIT_UNDER_REPLICATED", "BlockHealth", "CheckReport", "Replica",
           "ReplicaState", "check_blocks", "expand_locators", "sampled", "short_note"]

# Exit codes of `keep check` and `keep repair` (1 stays "error", 2 "usage"; see docs/lifecycle.md).
EXIT_HEALTHY = 0
EXIT_UNDER_REPLICATED = 4
EXIT_MISSING = 5

# Manifests are read to list their blocks only when they look like one (and fit in memory).
_MANIFEST_START = b"."


class ReplicaState(enum.Enum):
    """What one service (or a local store) holds of one block."""

    PRESENT = "present"  # answers HEAD (not read)
    VERIFIED = "verified"  # read back whole, size and md5 match
    MISSING = "missing"  # 403/404/410, or no file
    DAMAGED = "damaged"  # has it, but the bytes read do not match the locator
    UNKNOWN = "unknown"  # could not be asked (unreachable, 5xx): not counted as a replica

    @property
    def counts(self) -> bool:
        """Whether this is a good replica."""
        return self in (ReplicaState.PRESENT, ReplicaState.VERIFIED)


@dataclasses.dataclass(frozen=True)
class Replica:
    """One service's answer about one block.

    Args:
        where: A service root, or a local store directory.
        state: What the service said.
        note: Why, when the replica is not good.
    """

    where: str  # a service root, or a local store directory
    state: ReplicaState
    note: str = ""


@dataclasses.dataclass(frozen=True)
class BlockHealth:
    """One block: its replicas, in probe order, and how many were wanted.

    Args:
        locator: The block, as given (signed when the services want signatures); reports show it bare.
        copies: Replicas wanted.
        replicas: Each service's answer, in probe order.
        read: True when the replicas were read and verified, not only counted.
    """

    locator: Locator  # as given (signed, when the services want signatures); reports show it bare
    copies: int
    replicas: tuple[Replica, ...]
    read: bool = False

    @property
    def good(self) -> list[str]:
        return [r.where for r in self.replicas if r.state.counts]

    @property
    def state(self) -> str:
        """``healthy``, ``under-replicated`` (some good replicas, too few) or ``missing`` (none)."""
        n = len(self.good)
        return "healthy" if n >= self.copies else ("missing" if n == 0 else "under-replicated")

    def to_dict(self) -> dict[str, Any]:
        return {"locator": str(self.locator.bare()), "state": self.state, "copies": self.copies,
                "replicas": len(self.good), "read": self.read,
                "services": [{"where": r.where, "state": r.state.value, **({"note": r.note} if r.note else {})}
                             for r in self.replicas]}


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Every block checked, and the totals; `exit_code` is what `keep check` exits with.

    Args:
        copies: Replicas wanted of every block.
        blocks: Each block checked.
    """

    copies: int
    blocks: tuple[BlockHealth, ...]

    def totals(self) -> dict[str, int]:
        states = [b.state for b in self.blocks]
        return {"blocks": len(self.blocks), "bytes": sum(b.locator.size for b in self.blocks),
                "healthy": states.count("healthy"), "under_replicated": states.count("under-replicated"),
                "missing": states.count("missing"), "read": sum(b.read for b in self.blocks),
                "damaged_replicas": sum(r.state is ReplicaState.DAMAGED for b in self.blocks for r in b.replicas),
                "unknown_replicas": sum(r.state is ReplicaState.UNKNOWN for b in self.blocks for r in b.replicas)}

    @property
    def exit_code(self) -> int:
        totals = self.totals()
        if totals["missing"]:
            return EXIT_MISSING
        return EXIT_UNDER_REPLICATED if totals["under_replicated"] else EXIT_HEALTHY

    def problems(self) -> list[BlockHealth]:
        return [b for b in self.blocks if b.state != "healthy"]

    def to_dict(self) -> dict[str, Any]:
        return {"copies": self.copies, "exit_code": self.exit_code, "totals": self.totals(),
                "blocks": [b.to_dict() for b in self.blocks]}


def sampled(loc: Locator, fraction: float) -> bool:
    """Whether *loc* is in the read sample: a stable choice by md5, so a re-run reads the same
    blocks and ``fraction`` 1.0 reads every one."""
    return fraction >= 1.0 or int(loc.md5[:8], 16) < fraction * (1 << 32)


def expand_locators(store: BlockStore, texts: Iterable[str]) -> list[Locator]:
    """The distinct blocks named: a dataset locator gives its manifest block and every block
    its files use; a block locator gives itself. A manifest that cannot be read is still
    listed (as a block), so the check reports it."""
    seen: dict[str, Locator] = {}

    def add(loc: Locator) -> None:
        key = str(loc.bare())
        if key != EMPTY_BLOCK and key not in seen:
            seen[key] = loc

    for text in texts:
        loc = Locator.parse(text)
        add(loc)
        raw = _read_once(store, loc)
        if raw is None or not raw.startswith(_MANIFEST_START):
            continue
        try:
            manifest = Manifest.parse(raw)
        except (ManifestError, UnicodeDecodeError):  # a data block that starts with "."
            continue
        for block in manifest.blocks():
            add(block)
    return list(seen.values())


def _read_once(store: BlockStore, loc: Locator) -> bytes | None:
    """The verified block, asking each service once in probe order (no retry rounds: a block
    damaged everywhere must not cost minutes of back-off), or None when none gives it."""
    from ..client import KeepClient

    if not isinstance(store, KeepClient):
        try:
            return store.get(loc)
        except (BlockNotFound, ReadError):  # unreadable: checked (and reported) as a block
            return None
    for service in probe_order(loc, store.services):
        try:
            return store.get_from(service, loc)
        except KeepError:  # missing, damaged or unreachable here: the next service
            continue
    return None


Progress = Callable[[int], Any]


def check_blocks(store: BlockStore, blocks: Sequence[Locator], *, copies: int, read_fraction: float = 0.0,
                 threads: int = 8, progress: Progress = lambda n: None) -> CheckReport:
    """Ask every service (in probe order, *threads* requests at a time) about every block.

    Blocks in the read sample (`sampled`) are fetched from each service and verified, so a
    replica of the right size but wrong bytes is found ``damaged``; the others are HEADed. A
    `LocalStore` is one replica: each block's file is read and verified, and ``copies`` is 1.
    """
    if isinstance(store, LocalStore):
        return _check_local(store, blocks, progress)
    from ..client import KeepClient

    if not isinstance(store, KeepClient):
        raise KeepError(f"keep check needs Keep services or a local store, not {type(store).__name__}")
    services = store.services
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keep-check") as pool:
        futures = []
        for loc in blocks:
            read = sampled(loc, read_fraction)
            order = probe_order(loc, services)
            futures.append((loc, read, [pool.submit(probe, store, s, loc, read) for s in order]))
        report = []
        for loc, read, replicas in futures:
            report.append(BlockHealth(loc, copies, tuple(f.result() for f in replicas), read))
            progress(1)
    return CheckReport(copies, tuple(report))


def probe(client: "KeepClient", service: Service, loc: Locator, read: bool) -> Replica:
    """One service's `Replica` of *loc*: HEAD, or with *read* a verified GET.

    A GET that fails after HEAD says the block is there is ``damaged`` (keep serve cuts the
    body of a copy that does not hash to its name short)."""
    root = service.root
    try:
        if not read:
            return Replica(root, ReplicaState.PRESENT if client.head_on(service, loc) else ReplicaState.MISSING)
        try:
            client.get_from(service, loc)
            return Replica(root, ReplicaState.VERIFIED)
        except BlockNotFound:
            return Replica(root, ReplicaState.MISSING)
        except KeepError as exc:  # damaged, or the GET failed: HEAD tells which
            if client.head_on(service, loc):
                return Replica(root, ReplicaState.DAMAGED, short_note(exc))
            return Replica(root, ReplicaState.MISSING)
    except KeepError as exc:  # unreachable or a 5xx: this service's copy is unknown, not counted
        return Replica(root, ReplicaState.UNKNOWN, short_note(exc))


def short_note(exc: BaseException) -> str:
    text = str(exc)
    return text.split("] ", 1)[1] if text.startswith("[req-") and "] " in text else text


def _check_local(store: LocalStore, blocks: Sequence[Locator], progress: Progress) -> CheckReport:
    where = str(store.root)
    report = []
    for loc in blocks:
        try:
            store.get(loc)
            replica = Replica(where, ReplicaState.VERIFIED)
        except BlockNotFound:
            replica = Replica(where, ReplicaState.MISSING)
        except ReadError as exc:
            replica = Replica(where, ReplicaState.DAMAGED, str(exc))
        report.append(BlockHealth(loc, 1, (replica,), True))
        progress(1)
    return CheckReport(1, tuple(report))
