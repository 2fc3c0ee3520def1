"""Resumable puts: a journal of the blocks a put stored, so that a re-run reads and sends only what is missing."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..errors import LocatorError
from ..locator import MAX_BLOCK_SIZE, Locator, LocatorLike
from ..store import BlockStore, PutResult
from .inventory import Entry, Inventory
from .receipt import Receipt, atomic_write
from .stored import StoredCheck
from .writer import DatasetWriter

__all__ = [
    "STATE_VERSION",
    "ResumeJournal",
    "journal_for",
    "put_inventory",
    "state_dir",
    "state_key",
    "store_identity",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where resume states live: ``$XDG_CACHE_HOME/keepstore/resume`` (``~/.cache/keepstore/resume``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "keepstore" / "resume"


def store_identity(store: BlockStore) -> str:
    """What names *store* in a state key: its service roots, its directory, or its repr."""
    services = getattr(store, "services", None)
    if services is not None:
        return " ".join(sorted(s.root for s in services))
    root = getattr(store, "root", None)
    return f"local:{os.path.abspath(root)}" if root is not None else repr(store)


def state_key(sources: Iterable[str], options: Mapping[str, Any]) -> str:
    """The state's name: a hash of the absolute sources and the options that change the result."""
    text = json.dumps({"sources": [os.path.abspath(s) for s in sources], **options}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def journal_for(store: BlockStore, paths: Sequence[str], *, name: str | None = None, copies: int | None = None,
                storage_classes: Iterable[str] | None = None, update: str | None = None,
                remove: Iterable[str] = (), block_size: int = MAX_BLOCK_SIZE,
                environ: Mapping[str, str] | None = None,
                selection: Mapping[str, Any] | None = None) -> tuple[ResumeJournal | None, str]:
    """The journal (and its key) for ``keep put`` of *paths* with these options; (None, "") when
    stdin is among them (a stream cannot be resumed). *selection* holds the other choices that
    change what is stored (the CLI's --exclude/--include rules and symlink policy)."""
    if "-" in paths:
        return None, ""
    options = {"name": name, "copies": copies, "storage_classes": sorted(storage_classes or ()),
               "store": store_identity(store), "update": update, "remove": sorted(remove),
               "block_size": block_size, **({"selection": dict(selection)} if selection else {})}
    key = state_key(paths, options)
    return ResumeJournal(state_dir(environ) / f"put-{key}.jsonl", block_size), key


@dataclasses.dataclass(frozen=True)
class _Previous:
    """What a journal recorded: the files (with their stream offsets), blocks, and the result."""

    files: list[list[Any]]  # [path, source, size, mtime_ns, dev, ino]
    blocks: dict[int, dict[str, Any]]
    done: dict[str, Any] | None


class ResumeJournal:
    """One put's state file: a header (the files, in order, with size, mtime_ns, device and inode),
    then one JSON line per block stored (number, locator with its signature and expiry, replicas,
    services), then a ``done`` line with the dataset locator.

    Blocks are the fixed-size pieces of the files' bytes in order, so a file is done when every
    block its bytes fall in is recorded. Each line is written (and flushed to the kernel) as its
    block is stored, so a kill, even ``kill -9``, loses at most the blocks in flight; the file is
    replaced atomically when a run starts. A torn last line is ignored.

    Args:
        path: The state file.
        block_size: The size of a full block of the put.
    """

    def __init__(self, path: str | os.PathLike[str], block_size: int = MAX_BLOCK_SIZE) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self._lock = threading.Lock()
        self._out: TextIO | None = None

    def load(self, key: str) -> _Previous | None:
        """The previous run's record, or None (none, another version, or unreadable)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read resume state %s: %s", self.path, exc)
            return None
        try:
            header = json.loads(lines[0])
        except ValueError:
            return None
        if header.get("version") != STATE_VERSION or header.get("key") != key or \
                header.get("block_size") != self.block_size:
            return None
        blocks: dict[int, dict[str, Any]] = {}
        done = None
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except ValueError:
                break  # a torn last line (killed mid-write): what came before stands
            if "block" in record:
                blocks[int(record["block"])] = record
            elif "done" in record:
                done = record
        return _Previous(header.get("files", []), blocks, done)

    def start(self, key: str, files: Sequence[Entry], known: Mapping[int, PutResult]) -> None:
        """Replace the state with this run's header and the blocks it reuses; then append."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # signed locators: the user's only
        header = {"version": STATE_VERSION, "key": key, "block_size": self.block_size,
                  "files": [[e.path, e.source, e.size, e.mtime_ns, e.dev, e.ino] for e in files]}
        lines = [json.dumps(header)] + [self._line(i, known[i]) for i in sorted(known)]
        text = "\n".join(lines) + "\n"
        atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
        self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    @staticmethod
    def _line(index: int, result: PutResult) -> str:
        expires = result.locator.expires_at
        return json.dumps({"block": index, "locator": str(result.locator), "replicas": result.replicas,
                           "services": list(result.services), "classes": dict(result.storage_classes),
                           "expires": expires.isoformat() if expires else None})

    def record(self, index: int, result: PutResult, sent: bool) -> None:
        """Append one stored block (the writer's ``on_block``)."""
        self._append(self._line(index, result))

    def finished(self, receipt: Receipt) -> None:
        self._append(json.dumps({"done": receipt.locator, "pdh": receipt.portable_data_hash}))

    def _append(self, line: str) -> None:
        with self._lock:
            if self._out is None:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except OSError as exc:  # the put goes on; a re-run will read (and check) more again
                log.warning("cannot write resume state %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None


def reusable_blocks(previous: _Previous, files: Sequence[Entry], block_size: int) -> dict[int, Locator]:
    """The blocks of *previous* whose bytes are the same in this run: every file they hold is
    unchanged (same path, source, size, mtime_ns, device, inode) at the same stream offset, and a
    short last block is still the last one."""
    now: dict[tuple[int, str], tuple[Any, ...]] = {}
    offset = 0
    for e in files:
        now[(offset, e.path)] = (e.source, *e.identity)
        offset += e.size
    total = offset
    starts: list[int] = []
    before: list[tuple[int, str, tuple[Any, ...]]] = []
    offset = 0
    for path, source, size, mtime_ns, dev, ino in previous.files:
        if size > 0:
            starts.append(offset)
            before.append((offset, path, (source, size, mtime_ns, dev, ino)))
        offset += size
    out: dict[int, Locator] = {}
    for index, record in previous.blocks.items():
        try:
            loc = Locator.parse(record["locator"])
        except (LocatorError, KeyError, TypeError):
            continue
        start, end = index * block_size, index * block_size + loc.size
        if end > total or (loc.size != block_size and end != total):
            continue
        first = bisect.bisect_right(starts, start) - 1
        same = first >= 0
        i = first
        while same and i < len(before) and before[i][0] < end:
            at, path, identity = before[i]
            same = now.get((at, path)) == identity
            i += 1
        if same:
            out[index] = loc
    return out


def put_inventory(store: BlockStore, inventory: Inventory, *, stdin: Any = None, copies: int | None = None,
                  storage_classes: Iterable[str] | None = None, progress: Callable[[int], Any] | None = None,
                  journal: ResumeJournal | None = None, key: str = "", update: LocatorLike | None = None,
                  remove: Iterable[str] = (), block_size: int = MAX_BLOCK_SIZE,
                  check: StoredCheck | None = None, read_progress: Callable[[int], Any] | None = None,
                  on_file: Callable[[], Any] | None = None) -> Receipt:
    """Store *inventory* as a dataset (``keep put``): on top of the dataset *update* (by
    reference, minus *remove*, new files replacing old ones) when given, resuming from
    *journal* when given. Stdin entries read *stdin*. *progress* is called with each block's
    size once stored, *read_progress* with each chunk read, *on_file* after each file."""
    classes = list(storage_classes or ())
    check = check or StoredCheck(store, copies=copies, storage_classes=classes)
    known: dict[int, PutResult] = {}
    if journal is not None:
        known = _plan(journal, key, inventory.files, check)
        journal.start(key, inventory.files, known)
    try:
        with DatasetWriter(store, copies=copies, storage_classes=classes or None, progress=progress,
                           read_progress=read_progress, skip_stored=check, known=known, block_size=block_size,
                           on_block=journal.record if journal is not None else None) as writer:
            if update is not None:
                writer.add_dataset(update)
                for path in remove:
                    writer.remove(path)
            for d in inventory.directories:
                _make_room(writer, d)
                writer.add_directory(d)
            for e in inventory.files:
                _make_room(writer, e.path, replace=True)
                if e.source == "-":
                    writer.add_stream(e.path, stdin)
                else:
                    writer.add_file(e.source, e.path, expect=e if journal is not None else None)
                if on_file is not None:
                    on_file()
            receipt = writer.finish()
        if journal is not None:
            journal.finished(receipt)
        return receipt
    finally:
        check.close()
        if journal is not None:
            journal.close()


def _make_room(writer: DatasetWriter, path: str, *, replace: bool = False) -> None:
    """Drop what an updated dataset has in the way of *path*: files where its directories go,
    and (to *replace* it) what is at *path* itself."""
    parts = path.split("/")
    for n in range(1, len(parts)):
        parent = "/".join(parts[:n])
        if parent in writer and not writer.is_directory(parent):
            writer.remove(parent)
    if path in writer and (replace or not writer.is_directory(path)):
        writer.remove(path)


def _plan(journal: ResumeJournal, key: str, files: Sequence[Entry], check: StoredCheck) -> dict[int, PutResult]:
    """The previous run's blocks that this run can reuse: unchanged files, and still stored with
    enough replicas (checked with HEADs, several at once, with their signed locators); a
    signature expiring within the check's margin is not reused (the block is read and sent)."""
    previous = journal.load(key)
    if previous is None:
        return {}
    for record in previous.blocks.values():
        try:
            check.learn(Locator.parse(record.get("locator", "")))
        except LocatorError:
            continue
    if previous.done is not None:
        try:
            check.learn(Locator.parse(previous.done.get("done", "")))
        except LocatorError:
            pass  # no manifest to skip: it is sent again
    candidates = {i: loc for i, loc in reusable_blocks(previous, files, journal.block_size).items()
                  if not loc.signature or check.usable(loc)}
    order = sorted(candidates)
    counted = check.count_many(candidates[i] for i in order)
    known: dict[int, PutResult] = {}
    for index, found in zip(order, counted, strict=True):
        if found.replicas >= check.wanted:
            classes = previous.blocks[index].get("classes") or {}
            known[index] = PutResult(candidates[index], found.replicas, found.services, dict(classes))
    return known
