"""keep gc for Keep services: list each service's blocks (/index), DELETE the unreferenced ones past the grace."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import KeepError
from ..locator import EMPTY_BLOCK
from ..services import Service
from ..transport import Request

if TYPE_CHECKING:  # pragma: no cover
    from ..client import KeepClient

__all__ = ["ClusterCandidate", "ClusterGcReport", "IndexEntry", "collect_cluster", "read_index"]

INDEX_LIMIT = 1 << 30  # an /index of ~16 million blocks; past that, refuse rather than sweep half a list
_EMPTY_MD5 = EMPTY_BLOCK.split("+")[0]


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One ``/index`` line: a block a service holds, and its file's time.

    Args:
        md5: The block's md5.
        size: Its size in bytes.
        mtime_ns: Its file's modification time, in nanoseconds.
    """

    md5: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class ClusterCandidate:
    """An unreferenced block older than the cutoff on one service, and what became of it.

    *outcome*: ``would-delete`` (dry run), ``trashed`` (the service moved it to its trash),
    ``requested`` (200 from a service that does not say whether it trashed: Arvados
    keepstore), ``kept-young`` (the service kept it: younger than its own ``--trash-min-age``),
    ``kept-modified`` (written or touched since the listing: 412), ``gone`` (404) or
    ``failed`` (with *note*).

    Args:
        service: The service's root.
        md5: The block's md5.
        size: Its size in bytes.
        mtime: When the service's copy was last written.
        outcome: What became of it (see above).
        note: Why, when it failed.
    """

    service: str
    md5: str
    size: int
    mtime: datetime.datetime
    outcome: str = "would-delete"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"service": self.service, "locator": f"{self.md5}+{self.size}", "mtime": self.mtime.isoformat(),
               "outcome": self.outcome}
        return {**out, "note": self.note} if self.note else out


@dataclasses.dataclass(frozen=True)
class ClusterGcReport:
    cutoff: datetime.datetime
    live: int  # blocks referenced
    kept_young: int  # unreferenced copies newer than the cutoff (over all services)
    candidates: tuple[ClusterCandidate, ...]
    dry_run: bool

    @property
    def failed(self) -> list[ClusterCandidate]:
        return [c for c in self.candidates if c.outcome == "failed"]

    def count(self, *outcomes: str) -> int:
        return sum(c.outcome in outcomes for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run, "live": self.live,
                "kept_young": self.kept_young, "bytes": sum(c.size for c in self.candidates),
                "trashed": self.count("trashed", "requested"), "failed": len(self.failed),
                "candidates": [c.to_dict() for c in self.candidates]}


def _auth(system_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {system_token}"}


def read_index(client: "KeepClient", service: Service, system_token: str) -> list[IndexEntry]:
    """Every block *service* lists in ``GET /index``; `KeepError` unless the listing is whole
    (200 and the final empty line), since a sweep must never act on half a list."""
    response = client.transport.request(Request("GET", f"{service.root}index", headers=_auth(system_token),
                                                 body_limit=INDEX_LIMIT))
    if response.status != 200:
        raise KeepError(f"{service.root}index: HTTP {response.status} (is the system token right?); nothing deleted")
    text = response.body.decode("ascii", "replace")
    if response.truncated or not (text == "\n" or text.endswith("\n\n")):
        raise KeepError(f"{service.root}index: incomplete listing (no final empty line); nothing deleted")
    entries = []
    for line in text.splitlines():
        if not line:
            continue
        try:
            locator, mtime = line.split(" ")
            md5, size = locator.split("+")[:2]
            entries.append(IndexEntry(md5, int(size), int(mtime)))
        except ValueError:
            raise KeepError(f"{service.root}index: cannot read line {line[:80]!r}; nothing deleted") from None
    return entries


def collect_cluster(client: "KeepClient", live: set[str], cutoff: datetime.datetime, *, system_token: str,
                    dry_run: bool, threads: int = 8,
                    progress: Callable[[int], Any] = lambda n: None) -> ClusterGcReport:
    """Sweep every service of *client*: each block it lists that is not in *live* and whose
    time is before *cutoff* (cut to a whole second) is sent a ``DELETE`` with
    ``If-Unmodified-Since`` one second before it, so a copy written or touched since the
    listing is kept by the server (412). Every service is listed before anything is deleted;
    one that cannot be listed stops the run."""
    limit = math.floor(cutoff.timestamp())
    cutoff = datetime.datetime.fromtimestamp(limit, datetime.timezone.utc)
    services = [s for s in client.services if not s.is_gateway and not s.read_only]
    listings = [(service, read_index(client, service, system_token)) for service in services]
    candidates: list[ClusterCandidate] = []
    young = 0
    for service, entries in listings:
        for entry in entries:
            if entry.md5 in live or entry.md5 == _EMPTY_MD5:
                continue
            if entry.mtime_ns >= limit * 1_000_000_000:
                young += 1
                continue
            when = datetime.datetime.fromtimestamp(entry.mtime_ns / 1e9, datetime.timezone.utc)
            candidates.append(ClusterCandidate(service.root, entry.md5, entry.size, when))
    if not dry_run:
        since = email.utils.formatdate(limit - 1, usegmt=True)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keep-gc") as pool:
            futures = [pool.submit(_delete, client, c, since, system_token) for c in candidates]
            done = []
            for future in futures:
                done.append(future.result())
                progress(1)
        candidates = done
    return ClusterGcReport(cutoff, len(live), young, tuple(candidates), dry_run)


def _delete(client: "KeepClient", c: ClusterCandidate, since: str, system_token: str) -> ClusterCandidate:
    headers = {**_auth(system_token), "If-Unmodified-Since": since}
    try:
        response = client.transport.request(Request("DELETE", f"{c.service}{c.md5}+{c.size}", headers=headers))
    except KeepError as exc:  # unreachable now: this copy stays; the report says so
        return dataclasses.replace(c, outcome="failed", note=str(exc))
    if response.status == 200:
        trashed = response.headers.get("X-Keep-Trashed")
        outcome = "requested" if trashed is None else ("trashed" if trashed != "0" else "kept-young")
        return dataclasses.replace(c, outcome=outcome)
    if response.status == 412:
        return dataclasses.replace(c, outcome="kept-modified")
    if response.status == 404:
        return dataclasses.replace(c, outcome="gone")
    return dataclasses.replace(c, outcome="failed", note=f"HTTP {response.status}")
