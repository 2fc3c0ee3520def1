"""keep gc for a LocalStore: mark the blocks roots reference, sweep unreferenced blocks past a grace period."""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ciso8601

from ..datasets import Receipt
from ..datasets.manifest import Manifest, ManifestError
from ..errors import BlockNotFound, ConfigError, KeepError, ReadError
from ..local import LocalStore
from ..locator import Locator
from ..store import BlockStore

__all__ = ["DEFAULT_GRACE", "Candidate", "GcReport", "collect", "mark", "parse_duration", "parse_time",
           "receipt_roots", "roots_from_receipt"]

DEFAULT_GRACE = datetime.timedelta(days=14)

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> datetime.timedelta:
    """``90``, ``90s``, ``15m``, ``2h``, ``14d``, ``2w`` -> a timedelta; `ConfigError` otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"invalid duration {text!r}: want a number with s, m, h, d or w (e.g. 14d)")
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 time (parsed by ciso8601; a time without a zone is UTC); `ConfigError` otherwise."""
    try:
        when = ciso8601.parse_datetime(text)
    except ValueError as exc:
        raise ConfigError(f"invalid time {text!r}: {exc}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.timezone.utc)


def roots_from_receipt(path: str | Path) -> list[str]:
    """Every locator a ``keep put --json`` receipt file names: the dataset, its manifest, its blocks."""
    try:
        receipt = Receipt.from_json(Path(path).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read receipt {path}: {exc}") from None
    return [receipt.locator, receipt.manifest_block.locator, *(b.locator for b in receipt.blocks)]


def receipt_roots(path: str | Path) -> tuple[list[str], list[str]]:
    """A ``keep put --json`` receipt as (roots to read: the dataset; blocks kept unread: its
    manifest block and data blocks), so a gc need not fetch every data block to mark it."""
    every = roots_from_receipt(path)
    return every[:1], every[1:]


def mark(store: BlockStore, roots: Iterable[str], keep: Iterable[str] = ()) -> set[str]:
    """The md5s of every block the roots reference (a dataset's manifest and its blocks),
    and of the *keep* locators (marked without being read).

    A root that cannot be read raises: nothing may be swept while a reference is unknown.
    """
    live: set[str] = {Locator.parse(text).md5 for text in keep}
    for text in roots:
        loc = Locator.parse(text)
        live.add(loc.md5)
        try:
            raw = store.get(loc)
        except (BlockNotFound, ReadError) as exc:
            raise KeepError(f"cannot read root {loc.bare()} ({exc}); nothing deleted") from None
        if raw.startswith(b"."):
            try:
                live.update(block.md5 for block in Manifest.parse(raw).blocks())
            except (ManifestError, UnicodeDecodeError):  # a data block that starts with "."
                pass
    return live


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An unreferenced block older than the cutoff.

    Args:
        md5: The block's md5.
        size: Its size in bytes.
        mtime: When it was last written.
    """

    md5: str
    size: int
    mtime: datetime.datetime


@dataclasses.dataclass(frozen=True)
class GcReport:
    cutoff: datetime.datetime
    live: int  # blocks referenced
    kept_young: int  # unreferenced but newer than the cutoff
    candidates: tuple[Candidate, ...]
    deleted: tuple[str, ...]
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run, "live": self.live,
                "kept_young": self.kept_young, "bytes": sum(c.size for c in self.candidates),
                "candidates": [{"locator": f"{c.md5}+{c.size}", "mtime": c.mtime.isoformat()}
                               for c in self.candidates],
                "deleted": list(self.deleted)}


def collect(store: LocalStore, live: set[str], cutoff: datetime.datetime, *, dry_run: bool) -> GcReport:
    """Sweep: every block not in *live* whose file is older than *cutoff* goes (unless *dry_run*).

    Each file's time is read again just before it is removed, so a block re-written (touched)
    since the listing is kept.
    """
    limit_ns = int(cutoff.timestamp() * 1e9)
    candidates, young = [], 0
    for md5, size, mtime_ns in store.index():
        if md5 in live:
            continue
        if mtime_ns >= limit_ns:
            young += 1
            continue
        when = datetime.datetime.fromtimestamp(mtime_ns / 1e9, datetime.timezone.utc)
        candidates.append(Candidate(md5, size, when))
    deleted = []
    if not dry_run:
        for c in candidates:
            path = store.find(c.md5)
            try:
                if path is None or path.stat().st_mtime_ns >= limit_ns:
                    continue
            except FileNotFoundError:  # gone already
                continue
            if store.delete(Locator(c.md5, c.size)):
                deleted.append(f"{c.md5}+{c.size}")
    return GcReport(cutoff, len(live), young, tuple(candidates), tuple(deleted), dry_run)
