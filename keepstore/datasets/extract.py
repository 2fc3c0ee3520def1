"""Extract a dataset by block: each block fetched once, in parallel, and written out as it arrives."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
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

DEFAULT_MAX_OPEN = 64  # temp files held open at once; others are closed and reopened when needed
_WRITERS = 8  # threads writing whole small files: creating a file waits on the journal, so overlap
_MAX_WRITES = 64  # whole-file writes queued (each holds a view of its block) before the reader waits
_MAX_WAITING = 4096  # complete files waiting for a busy committer before the writers wait too
_PROGRESS_CHUNK = 8 << 20  # bytes written between two progress calls (bars move within a block)


@dataclasses.dataclass(slots=True)
class _Output:
    """One file being written: where it goes, its temp file once started, and bytes still to come."""

    target: str
    left: int
    temp: str | None = None


class _Outputs:
    """The temp files of an extract, at most *max_open* of them open (least recently written closed).

    A file that one block holds whole (the usual small file) is created, written and closed by
    one of a few writer threads: creating and growing a file each wait for the filesystem's
    journal, and several threads wait at once. Other files are written in place, piece by piece,
    by the thread reading the blocks. A complete file is queued; a committer thread makes the
    queued files durable as a batch (`Durability`: one syncfs(2) where that is reliable, else an
    fsync per file) and only then renames them into place. So no file is visible under its name
    before its content is durable, and a batch costs one journal commit instead of one per file;
    a batch is whatever completed while the one before was committed.
    """

    def __init__(self, max_open: int, durability: Durability) -> None:
        self.max_open = max(1, max_open)
        self.files: list[_Output] = []
        self._open: collections.OrderedDict[int, int] = collections.OrderedDict()  # file number -> fd
        self._durability = durability
        self._writes: collections.deque[cf.Future[None]] = collections.deque()
        self._writer: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards _complete and _commit (writers queue files too)
        self._complete: list[int] = []  # closed, waiting for the committer
        self._commit: cf.Future[None] | None = None
        self._committer: cf.ThreadPoolExecutor | None = None

    def fd(self, n: int) -> int:
        fd = self._open.get(n)
        if fd is not None:
            self._open.move_to_end(n)
            return fd
        out = self.files[n]
        while len(self._open) >= self.max_open:
            os.close(self._open.popitem(last=False)[1])
        if out.temp is None:
            fd, out.temp = new_temp(out.target)
        else:
            fd = os.open(out.temp, os.O_WRONLY | os.O_CLOEXEC)
        self._open[n] = fd
        return fd

    def write(self, n: int, at: int, data: memoryview) -> None:
        """Write a piece of file *n*; queue the file for commit once its last byte is written."""
        out = self.files[n]
        if out.temp is None and len(data) == out.left and n not in self._open:  # the whole file
            out.left = 0
            self._write_whole(n, data)
            return
        _pwrite_all(self.fd(n), data, at)
        out.left -= len(data)
        if out.left == 0:
            os.close(self._open.pop(n))
            self._queue(n)

    def empty(self, target: str) -> None:
        """Create the empty file *target* (committed like the others)."""
        self.files.append(_Output(target, 0))
        self._write_whole(len(self.files) - 1, memoryview(b""))

    def _write_whole(self, n: int, data: memoryview) -> None:
        writes = self._writes
        while writes and (writes[0].done() or len(writes) >= _MAX_WRITES):
            writes.popleft().result()
        if self._writer is None:
            self._writer = cf.ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="keep-write")
        writes.append(self._writer.submit(self._create, n, data))

    def _create(self, n: int, data: memoryview) -> None:
        """(A writer thread) write file *n* whole to a new temp file, and queue it."""
        out = self.files[n]
        fd, temp = new_temp(out.target)
        try:
            try:
                _pwrite_all(fd, data, 0)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        out.temp = temp
        self._queue(n)

    def _queue(self, n: int) -> None:
        with self._lock:
            self._complete.append(n)
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
            self._commit = self._committer.submit(self._commit_batch, [self.files[n] for n in batch])

    def _commit_batch(self, batch: list[_Output]) -> None:
        """Make *batch* durable, then rename each file into place; on failure remove its temp files."""
        try:
            self._durability.sync([(out.temp, os.path.dirname(out.target)) for out in batch if out.temp])
            for out in batch:
                assert out.temp is not None  # set when written, cleared here only
                os.replace(out.temp, out.target)
                out.temp = None
        except BaseException:
            for out in batch:
                if out.temp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(out.temp)
                    out.temp = None
            raise

    def drain(self) -> None:
        """Finish every write, commit every complete file and wait for it; raise the first failure."""
        try:
            while self._writes:
                self._writes.popleft().result()
            with self._lock:
                self._hand_over()
                commit = self._commit
            if commit is not None:
                commit.result()
                self._commit = None
        finally:
            self._stop()

    def _stop(self) -> None:
        for pool in (self._writer, self._committer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer = self._committer = None
        self._durability.close()

    def discard(self) -> None:
        """Commit the complete files if that still works; close and remove every unfinished one."""
        for write in self._writes:  # let every writer finish (or fail) before cleaning up
            with contextlib.suppress(Exception):  # we are failing already: the first failure propagates
                write.result()
        self._writes.clear()
        with contextlib.suppress(OSError):  # a commit failure: we are failing already
            self.drain()
        for fd in self._open.values():
            with contextlib.suppress(OSError):  # closing is best effort while failing anyway
                os.close(fd)
        self._open.clear()
        for out in self.files:
            if out.temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out.temp)
                out.temp = None


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
    outputs = _Outputs(max_open, Durability())
    order: list[Locator] = []  # distinct blocks, in the order the files (sorted by path) use them
    pieces: dict[str, list[tuple[int, int, int, int]]] = {}  # block -> (file, file offset, offset, length)
    for mf in manifest.walk_files():
        if mf.path in skip:
            continue
        target = inside(mf.path)
        makedirs(os.path.dirname(target))
        size = mf.size
        if size == 0:
            outputs.empty(target)
            continue
        n = len(outputs.files)
        outputs.files.append(_Output(target, size))
        len(mf.segments)  # loads a parsed file's ranges: FileSegments.overlapping assumes they are loaded
        for _i, at, seg in mf.segments_in(0, size):
            if seg.length == 0:
                continue
            key = f"{seg.locator.md5}+{seg.locator.size}"
            wanted = pieces.get(key)
            if wanted is None:
                wanted = pieces[key] = []
                order.append(seg.locator)
            wanted.append((n, at, seg.offset, seg.length))
    return _fetch_and_write(order, pieces, outputs, blocks, progress)


def _fetch_and_write(order: list[Locator], pieces: dict[str, list[tuple[int, int, int, int]]],
                     outputs: _Outputs, blocks: "BlockSource", progress: Callable[[int], Any] | None) -> int:
    """Fetch *order* with ``blocks.threads`` in flight, writing each block's pieces as it comes
    (in the order the blocks arrive: a small block is written while a large one downloads)."""
    executor = blocks.executor()
    window: dict[cf.Future[bytes], Locator] = {}
    queue = iter(order)

    def submit() -> None:
        loc = next(queue, None)
        if loc is not None:
            window[executor.submit(blocks.block, loc)] = loc

    total = 0
    try:
        for _ in range(blocks.threads):
            submit()
        while window:
            done, _pending = cf.wait(window, return_when=cf.FIRST_COMPLETED)
            for future in sorted(done, key=list(window).index):  # several at once: in manifest order
                loc = window.pop(future)
                data = future.result()
                submit()
                with memoryview(data) as view:
                    for n, at, offset, length in pieces.pop(f"{loc.md5}+{loc.size}"):
                        # A piece of at most one chunk goes in one write (a whole small file takes
                        # the fast path); a longer one in chunks, so that progress moves as it is written.
                        step = length if length <= _PROGRESS_CHUNK else _PROGRESS_CHUNK
                        for start in range(0, length, step) if length else (0,):
                            part = min(step, length - start)
                            outputs.write(n, at + start, view[offset + start:offset + start + part])
                            if progress is not None:
                                progress(part)
                        total += length
                del data
        outputs.drain()
    except BaseException:
        for pending in window:
            pending.cancel()
        outputs.discard()
        raise
    return total
