"""Extract a dataset by block: each block fetched once, in parallel, its bytes written out as they arrive."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from ..locator import Locator
from .durable import Durability, syncfs_device
from .manifest import Manifest
from .receipt import DatasetError, new_temp

if TYPE_CHECKING:
    from .reader import BlockSource

__all__ = ["DEFAULT_MAX_OPEN", "extract"]

DEFAULT_MAX_OPEN = 64  # part-written temp files one block's writer holds open; others are closed and reopened
_MAX_WAITING = 4096  # complete files waiting for a busy committer before the writers wait too
_PIECE = 8 << 20  # a block handed over whole (from a cache) is written this much at a time (progress moves)
_STAGE = 4 << 20  # a streamed block's bytes are gathered this much at a time, then written
_DIRECT_MIN = 4 << 20  # file pieces at least this long (and 4 KiB-aligned) go to disk with O_DIRECT
_ALIGN = 4096  # the O_DIRECT alignment asked of memory, file offsets and lengths (any device's block size)

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
        self.direct_ok = False  # O_DIRECT for long aligned pieces: set by extract, cleared when refused
        self._stages: list[tuple[mmap.mmap, memoryview]] = []  # staging buffers, reused across blocks
        self._free: list[memoryview] = []

    def add(self, target: str, blocks: int) -> int:
        self.targets.append(target)
        self.temps.append(None)
        self.left.append(blocks)
        return len(self.targets) - 1

    def open(self, n: int, *, direct: bool = False) -> int:
        """An fd writing file *n*'s temp file (created on first use); *direct*: with O_DIRECT."""
        with self._lock:
            if self.stopped:
                raise _Stopped
            temp = self.temps[n]
            if temp is None:
                fd, temp = new_temp(self.targets[n])
                self.temps[n] = temp
                if not direct:
                    return fd
                os.close(fd)
        return os.open(temp, os.O_WRONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))

    def take_stage(self) -> memoryview:
        """A page-aligned staging buffer of `_STAGE` bytes (a reused one when there is one)."""
        with self._lock:
            if self._free:
                return self._free.pop()
            buffer = mmap.mmap(-1, _STAGE)
            view = memoryview(buffer)
            self._stages.append((buffer, view))
            return view

    def give_stage(self, stage: memoryview) -> None:
        with self._lock:
            self._free.append(stage)

    def _release_stages(self) -> None:
        for buffer, view in self._stages:
            with contextlib.suppress(BufferError):  # a slice still held (by a traceback): freed when it goes
                view.release()
                buffer.close()
        self._stages.clear()
        self._free.clear()

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
            self._release_stages()

    def discard(self) -> None:
        """Commit the complete files if that still works; remove every unfinished temp file."""
        with contextlib.suppress(OSError):  # a commit failure: we are failing already
            self.drain()
        for n in range(len(self.temps)):
            self._remove(n)


class _BlockWriter:
    """``write(offset, piece)`` for one block: writes the bytes of every file piece the block holds.

    Called by the thread fetching the block as its bytes stream in (gathered into a staging
    buffer of `_STAGE` bytes first: a transfer delivers 16 KiB at a time, and one write per
    piece per stage is far cheaper), or once with the whole block (from a cache, or a store
    that cannot stream). Long pieces that sit at 4 KiB boundaries in their file go straight
    from the page-aligned stage to the disk (``O_DIRECT``, where the filesystem has it): no
    page-cache copy, and the final sync has little left to write. Bytes are written at their
    place in each file, so when a replica fails part-way and the next one starts again at
    offset 0, the same places are simply written again. Only after the whole block has matched
    its md5 does `_Files.arrived` count it for its files: nothing unverified is ever renamed.
    """

    def __init__(self, files: _Files, size: int, pieces: list[Piece], max_open: int,
                 progress: Callable[[int], Any] | None) -> None:
        self.files = files
        self.size = size
        self.pieces = sorted(pieces)
        self.max_open = max(1, max_open)
        self.progress = progress
        self.next = 0  # pieces before this one are written whole (in this pass over the block)
        self.fds: dict[int, int] = {}  # part-written files -> fd, least recently written first
        self.direct: dict[int, int] = {}  # part-written files -> O_DIRECT fd
        self.written = 0  # bytes of file pieces written in this pass over the block
        self.reported = 0  # of those, told to progress (a second pass tells nothing new)
        self.position = 0  # where the next write should start
        self.stage: memoryview | None = None
        self.staged = 0  # bytes in the stage, from block offset position - staged

    def __call__(self, offset: int, data: bytes) -> None:
        if self.files.stopped:
            raise _Stopped
        if offset < self.position:  # another replica, from the start
            self.close()
            self.next = self.staged = self.written = 0
        size = len(data)
        if self.staged == 0 and (size >= _STAGE or offset % _STAGE):  # whole (or odd) pieces: as they are
            with memoryview(data) as view:
                for start in range(0, size, _PIECE):
                    self.write(offset + start, view[start:start + _PIECE], aligned=False)
                    self.told()  # a bar moves within a block
        else:
            if self.stage is None:
                self.stage = self.files.take_stage()
            stage, done, incoming = self.stage, 0, memoryview(data)
            while done < size:
                part = min(size - done, _STAGE - self.staged)
                stage[self.staged:self.staged + part] = incoming[done:done + part]
                self.staged += part
                done += part
                if self.staged == _STAGE or offset + done == self.size:
                    self.write(offset + done - self.staged, stage[:self.staged], aligned=True)
                    self.staged = 0
        self.position = offset + size
        self.told()

    def told(self) -> None:
        """Tell progress of the file bytes written and not told before (a second pass tells nothing)."""
        if self.progress is not None and self.written > self.reported:
            self.progress(self.written - self.reported)
            self.reported = self.written

    def write(self, offset: int, view: memoryview, *, aligned: bool) -> None:
        """Write the block's bytes *view* (from block offset *offset*) into their files;
        *aligned*: *view* is page-aligned memory starting at a multiple of `_STAGE`."""
        end = offset + len(view)
        pieces, fds = self.pieces, self.fds
        i = self.next
        while i < len(pieces) and pieces[i][0] < end:
            at_block, n, at_file, length = pieces[i]
            stop = at_block + length
            if stop > offset:
                first, last = max(at_block, offset), min(stop, end)
                self.written += last - first
                place = at_file + first - at_block
                if aligned and length >= _DIRECT_MIN and at_block % _ALIGN == 0 == at_file % _ALIGN:
                    first += self.write_direct(n, view[first - offset:last - offset], place)
                    place = at_file + first - at_block
                if first < last:
                    fd = fds.pop(n, None)
                    if fd is None:
                        fd = self.files.open(n)
                    try:
                        _pwrite_all(fd, view[first - offset:last - offset], place)
                    except BaseException:
                        os.close(fd)
                        raise
                    if last == stop:
                        os.close(fd)
                    else:
                        fds[n] = fd  # re-inserted: most recently written last
                        while len(fds) > self.max_open:
                            os.close(fds.pop(next(iter(fds))))
                if last == stop and n in self.direct:
                    os.close(self.direct.pop(n))
            if stop <= end and i == self.next:
                self.next = i + 1
            i += 1

    def write_direct(self, n: int, view: memoryview, place: int) -> int:
        """Write the 4 KiB-aligned start of *view* to file *n* at *place* with O_DIRECT; return
        the bytes written (0 where the filesystem refuses O_DIRECT: the caller writes them)."""
        whole = len(view) - len(view) % _ALIGN
        fd = self.direct.get(n)
        if whole == 0 or (fd is None and not self.files.direct_ok):
            return 0
        try:
            if fd is None:
                fd = self.direct[n] = self.files.open(n, direct=True)
            _pwrite_all(fd, view[:whole], place)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.files.direct_ok = False  # a filesystem without O_DIRECT (or other alignment): write through the cache
            if n in self.direct:
                os.close(self.direct.pop(n))
            return 0
        return whole

    def close(self) -> None:
        for fd in (*self.fds.values(), *self.direct.values()):
            with contextlib.suppress(OSError):  # closing is best effort: the bytes are verified later
                os.close(fd)
        self.fds.clear()
        self.direct.clear()
        if self.stage is not None:
            self.files.give_stage(self.stage)
            self.stage = None


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
    under = os.path.join(root, "")  # root and a separator

    def inside(rel: str) -> str:
        # Manifest paths are checked when parsed or built (no "..", no absolute names);
        # this is the last line of defence before writing.
        target = os.path.normpath(os.path.join(root, rel))
        if not target.startswith(under):
            raise DatasetError(f"dataset path {rel!r} would be written outside {dest}")
        return target

    def makedirs(path: str) -> None:
        if path not in made:
            os.makedirs(path, exist_ok=True)
            made.add(path)

    for d in sorted(manifest.directories):
        makedirs(inside(d))
    files = _Files(Durability())
    # Direct writes only where they are known to behave like buffered ones but cheaper: the local
    # filesystems whose syncfs is trusted (on NFS or FUSE each would be a synchronous round trip).
    files.direct_ok = hasattr(os, "O_DIRECT") and syncfs_device(root) is not None
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
            held: set[str] = set()
            at = 0
            for seg in mf.segments:
                if seg.length:
                    key = f"{seg.locator.md5}+{seg.locator.size}"
                    wanted = pieces.get(key)
                    if wanted is None:
                        wanted = pieces[key] = []
                        order.append(seg.locator)
                    wanted.append((seg.offset, n, at, seg.length))
                    held.add(key)
                    at += seg.length
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
        writer = _BlockWriter(files, loc.size, wanted, max_open, told if progress is not None else None)
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
