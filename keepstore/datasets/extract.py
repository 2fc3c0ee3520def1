"""Extract a dataset by block: each block fetched once, in parallel, its bytes written out as they arrive."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from ..locator import Locator
from .durable import Durability
from .manifest import Manifest
from .receipt import DatasetError, new_temp

if TYPE_CHECKING:
    from .reader import BlockSource

__all__ = ["DEFAULT_MAX_OPEN", "extract"]

DEFAULT_MAX_OPEN = 64  # part-written temp files one block's writer holds open; others are closed and reopened
_MAX_WAITING = 4096  # complete files waiting for a busy committer before the writers wait too
_PIECE = 8 << 20  # a block handed over whole (from a cache) is written this much at a time (progress moves)

Piece = tuple[int, int, int, int]  # (offset in the block, file number, offset in the file, length)


class _Stopped(Exception):
    """Raised inside a block's writer once the extract is failing: ends that block's transfer."""


class _Files:
    """The files of one extract: their targets, temp files, the pieces still to come, and the commit.

    A file is written to a uniquely named temp file beside its target, piece by piece, as the
    blocks holding it stream in. Once every block it has a piece in has arrived whole and
    matched its md5, the file is complete and queued; a committer thread makes the queued files
    durable as one batch (`Durability`: one syncfs(2) where that is reliable, else an fsync per
    file) and only then renames them into place. So no file is visible under its name before
    its content is complete, verified and durable; a batch is whatever completed while the one
    before was committed. `drain` also makes the renames durable before it returns.
    """

    def __init__(self, durability: Durability) -> None:
        self.targets: list[str] = []
        self.temps: list[str | None] = []
        self.left: list[int] = []  # blocks still to arrive, per file
        self.stopped = False  # set when the extract fails: writers stop at their next piece
        self._durability = durability
        self._lock = threading.Lock()  # guards temps, left, _complete, _commit
        self._complete: list[int] = []  # written and verified, waiting for the committer
        self._commit: cf.Future[None] | None = None
        self._committer: cf.ThreadPoolExecutor | None = None
        self._renamed_in: set[str] = set()  # directories a rename went into (made durable at the end)

    def add(self, target: str, blocks: int) -> int:
        self.targets.append(target)
        self.temps.append(None)
        self.left.append(blocks)
        return len(self.targets) - 1

    def open(self, n: int) -> int:
        """An fd writing file *n*'s temp file (created on first use)."""
        with self._lock:
            if self.stopped:
                raise _Stopped
            temp = self.temps[n]
            if temp is None:
                fd, self.temps[n] = new_temp(self.targets[n])
                return fd
        return os.open(temp, os.O_WRONLY | os.O_CLOEXEC)

    def empty(self, target: str) -> None:
        """Create the empty file *target* (committed like the others)."""
        n = self.add(target, 0)
        os.close(self.open(n))
        self._queue([n])

    def arrived(self, files: Collection[int]) -> None:
        """Every piece of a block, held by *files*, is written and verified."""
        with self._lock:
            done = []
            for n in files:
                self.left[n] -= 1
                if self.left[n] == 0:
                    done.append(n)
        self._queue(done)

    def _queue(self, files: list[int]) -> None:
        if not files:
            return
        with self._lock:
            self._complete.extend(files)
            commit = self._commit
            if commit is None or commit.done():
                self._hand_over()
            elif len(self._complete) >= _MAX_WAITING:
                commit.result()
                self._hand_over()

    def _hand_over(self) -> None:
        """(Holding the lock) give the queued files to the committer; the batch before must be
        done, and its failure is raised here."""
        if self._commit is not None:
            self._commit.result()
            self._commit = None
        batch, self._complete = self._complete, []
        if batch:
            if self._committer is None:
                self._committer = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="keep-commit")
            self._commit = self._committer.submit(self._commit_batch, batch)

    def _commit_batch(self, batch: list[int]) -> None:
        """Make *batch* durable, then rename each file into place; on failure remove its temp files."""
        temps, targets = self.temps, self.targets
        try:
            self._durability.sync([(temps[n], os.path.dirname(targets[n])) for n in batch])  # type: ignore[misc]
            for n in batch:
                os.replace(temps[n], targets[n])  # type: ignore[arg-type]  # set when queued
                temps[n] = None
                self._renamed_in.add(os.path.dirname(targets[n]))
        except BaseException:
            for n in batch:
                self._remove(n)
            raise

    def _remove(self, n: int) -> None:
        temp, self.temps[n] = self.temps[n], None
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def drain(self) -> None:
        """Commit every complete file and wait for it, then make the renames durable (so a
        finished extract survives a crash); raise the first failure."""
        try:
            with self._lock:
                self._hand_over()
                commit = self._commit
            if commit is not None:
                commit.result()
                self._commit = None
            self._durability.sync_directories(sorted(self._renamed_in))
        finally:
            if self._committer is not None:
                self._committer.shutdown(wait=True)
                self._committer = None
            self._durability.close()

    def discard(self) -> None:
        """Commit the complete files if that still works; remove every unfinished temp file."""
        with contextlib.suppress(OSError):  # a commit failure: we are failing already
            self.drain()
        for n in range(len(self.temps)):
            self._remove(n)


class _BlockWriter:
    """``write(offset, piece)`` for one block: writes the bytes of every file piece the block holds.

    Called by the thread fetching the block as its bytes stream in, or once with the whole
    block (from a cache, or a store that cannot stream). Bytes are written at their place in
    each file, so when a replica fails part-way and the next one starts again at offset 0, the
    same places are simply written again. Only after the whole block has matched its md5 does
    `_Files.arrived` count the block for its files: nothing unverified is ever renamed.
    """

    def __init__(self, files: _Files, pieces: list[Piece], max_open: int,
                 progress: Callable[[int], Any] | None) -> None:
        self.files = files
        self.pieces = sorted(pieces)
        self.max_open = max(1, max_open)
        self.progress = progress
        self.next = 0  # pieces before this one are written whole (in this pass over the block)
        self.fds: dict[int, int] = {}  # part-written files -> fd, least recently written first
        self.reported = 0  # bytes of the block told to progress (a second pass tells nothing new)
        self.position = 0  # where the next write should start

    def __call__(self, offset: int, data: bytes) -> None:
        if self.files.stopped:
            raise _Stopped
        if offset < self.position:  # another replica, from the start
            self.close()
            self.next = 0
        with memoryview(data) as view:
            for start in range(0, len(view), _PIECE):
                part = view[start:start + _PIECE]
                self.write(offset + start, part)
                if self.progress is not None and offset + start + len(part) > self.reported:
                    self.progress(offset + start + len(part) - max(self.reported, offset + start))
                    self.reported = offset + start + len(part)
        self.position = offset + len(data)

    def write(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        pieces, fds = self.pieces, self.fds
        i = self.next
        while i < len(pieces) and pieces[i][0] < end:
            at_block, n, at_file, length = pieces[i]
            stop = at_block + length
            if stop > offset:
                first, last = max(at_block, offset), min(stop, end)
                fd = fds.pop(n, None)
                if fd is None:
                    fd = self.files.open(n)
                try:
                    _pwrite_all(fd, view[first - offset:last - offset], at_file + first - at_block)
                except BaseException:
                    os.close(fd)
                    raise
                if last == stop:
                    os.close(fd)
                else:
                    fds[n] = fd  # re-inserted: most recently written last
                    while len(fds) > self.max_open:
                        os.close(fds.pop(next(iter(fds))))
            if stop <= end and i == self.next:
                self.next = i + 1
            i += 1

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):  # closing is best effort: the bytes are verified later
                os.close(fd)
        self.fds.clear()


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    while data:
        written = os.pwrite(fd, data, at)
        data, at = data[written:], at + written


def extract(manifest: Manifest, blocks: "BlockSource", dest: str | os.PathLike[str], *,
            progress: Callable[[int], Any] | None = None, max_open: int = DEFAULT_MAX_OPEN,
            skip: Collection[str] = frozenset()) -> int:
    """Write every file and directory of *manifest* under *dest*, fetching through *blocks*;
    return the bytes written (see `DatasetReader.extract`). Files whose paths are in *skip* are
    left as they are (their blocks are not fetched for them)."""
    root = os.path.abspath(os.fspath(dest))
    os.makedirs(root, exist_ok=True)
    made = {root}

    def inside(rel: str) -> str:
        # Manifest paths are checked when parsed or built (no "..", no absolute names);
        # this is the last line of defence before writing.
        target = os.path.abspath(os.path.join(root, rel))
        if os.path.commonpath([root, target]) != root:
            raise DatasetError(f"dataset path {rel!r} would be written outside {dest}")
        return target

    def makedirs(path: str) -> None:
        if path not in made:
            os.makedirs(path, exist_ok=True)
            made.add(path)

    for d in sorted(manifest.directories):
        makedirs(inside(d))
    files = _Files(Durability())
    order: list[Locator] = []  # distinct blocks, in the order the files (sorted by path) use them
    pieces: dict[str, list[Piece]] = {}
    try:
        for mf in manifest.walk_files():
            if mf.path in skip:
                continue
            target = inside(mf.path)
            makedirs(os.path.dirname(target))
            size = mf.size
            if size == 0:
                files.empty(target)
                continue
            n = files.add(target, 0)
            len(mf.segments)  # loads a parsed file's ranges: FileSegments.overlapping assumes they are loaded
            held: set[str] = set()
            for _i, at, seg in mf.segments_in(0, size):
                if seg.length == 0:
                    continue
                key = f"{seg.locator.md5}+{seg.locator.size}"
                wanted = pieces.get(key)
                if wanted is None:
                    wanted = pieces[key] = []
                    order.append(seg.locator)
                wanted.append((seg.offset, n, at, seg.length))
                held.add(key)
            files.left[n] = len(held)
    except BaseException:
        files.discard()
        raise
    return _fetch_and_write(order, pieces, files, blocks, max_open, progress)


def _fetch_and_write(order: list[Locator], pieces: dict[str, list[Piece]], files: _Files,
                     blocks: "BlockSource", max_open: int, progress: Callable[[int], Any] | None) -> int:
    """Stream *order* with ``blocks.threads`` in flight, each block's bytes written as they come."""
    executor = blocks.executor()
    window: set[cf.Future[int]] = set()
    queue = iter(order)
    lock = threading.Lock()  # progress may be called from several fetching threads

    def told(n: int) -> None:
        with lock:
            assert progress is not None
            progress(n)

    def one(loc: Locator) -> int:
        key = f"{loc.md5}+{loc.size}"
        wanted = pieces[key]
        writer = _BlockWriter(files, wanted, max_open, told if progress is not None else None)
        try:
            blocks.stream(loc, writer)
        finally:
            writer.close()
        files.arrived({n for _b, n, _a, _l in wanted})
        return sum(length for _b, _n, _a, length in wanted)

    def submit() -> None:
        loc = next(queue, None)
        if loc is not None:
            window.add(executor.submit(one, loc))

    total = 0
    try:
        for _ in range(blocks.threads):
            submit()
        while window:
            done, _pending = cf.wait(window, return_when=cf.FIRST_COMPLETED)
            for future in done:
                window.discard(future)
                total += future.result()
                submit()
        files.drain()
    except BaseException:
        files.stopped = True  # the writers still streaming stop at their next piece
        for pending in window:
            pending.cancel()
        cf.wait(window)  # none may write after the clean-up
        files.discard()
        raise
    return total
