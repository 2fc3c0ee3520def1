"""Extract a dataset by block: each block fetched once, in parallel, and written out as it arrives."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import os
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from ..locator import Locator
from .manifest import Manifest
from .receipt import DatasetError, atomic_write, new_temp

if TYPE_CHECKING:
    from .reader import BlockSource

__all__ = ["DEFAULT_MAX_OPEN", "extract"]

DEFAULT_MAX_OPEN = 64  # temp files held open at once; others are closed and reopened when needed
_FINISH_THREADS = 8
_PROGRESS_CHUNK = 8 << 20  # bytes written between two progress calls


@dataclasses.dataclass
class _Output:
    """One file being written: where it goes, its temp file once started, and bytes still to come."""

    target: str
    left: int
    temp: str | None = None


class _Outputs:
    """The temp files of an extract, at most *max_open* of them open (least recently written closed)."""

    def __init__(self, max_open: int) -> None:
        self.max_open = max(1, max_open)
        self.files: list[_Output] = []
        self._open: collections.OrderedDict[int, int] = collections.OrderedDict()  # file number -> fd
        # Complete files are fsynced and renamed by a few threads: fsyncs overlap (the journal
        # commits them together), 2-3x faster than one after another for many small files.
        self._finishing: collections.deque[cf.Future[None]] = collections.deque()
        self._pool: cf.ThreadPoolExecutor | None = None

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
        fd = self.fd(n)
        while data:
            written = os.pwrite(fd, data, at)
            data, at = data[written:], at + written

    def finish(self, n: int) -> None:
        """Hand the complete file to a finishing thread: fsync, close, rename into place."""
        fd = self.fd(n)
        del self._open[n]
        while len(self._finishing) >= self.max_open:  # their fds count as open files too
            self._finishing.popleft().result()
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=_FINISH_THREADS, thread_name_prefix="keep-extract")
        self._finishing.append(self._pool.submit(self._finish_one, self.files[n], fd))

    @staticmethod
    def _finish_one(out: _Output, fd: int) -> None:
        assert out.temp is not None
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(out.temp, out.target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out.temp)
            raise
        finally:
            out.temp = None

    def drain(self) -> None:
        """Wait for every file handed to `finish`; raise the first failure."""
        try:
            while self._finishing:
                self._finishing.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def discard(self) -> None:
        """Close every open temp file and remove every unfinished one."""
        with contextlib.suppress(OSError):  # a finishing failure: we are failing already
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
    outputs = _Outputs(max_open)
    order: list[Locator] = []  # distinct blocks, in the order the files (sorted by path) use them
    pieces: dict[str, list[tuple[int, int, int, int]]] = {}  # block -> (file, file offset, offset, length)
    for mf in manifest.walk_files():
        if mf.path in skip:
            continue
        target = inside(mf.path)
        makedirs(os.path.dirname(target))
        size = mf.size
        if size == 0:
            atomic_write(target, lambda f: None)
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
    """Fetch *order* with ``blocks.threads`` in flight, writing each block's pieces as it comes."""
    executor = blocks.executor()
    window: collections.deque[tuple[Locator, cf.Future[bytes]]] = collections.deque()
    queue = iter(order)

    def submit() -> None:
        loc = next(queue, None)
        if loc is not None:
            window.append((loc, executor.submit(blocks.block, loc)))

    total = 0
    try:
        for _ in range(blocks.threads):
            submit()
        while window:
            loc, future = window.popleft()
            data = future.result()
            submit()
            with memoryview(data) as view:
                for n, at, offset, length in pieces.pop(f"{loc.md5}+{loc.size}"):
                    for start in range(0, length, _PROGRESS_CHUNK):  # progress moves as bytes are written
                        part = min(_PROGRESS_CHUNK, length - start)
                        outputs.write(n, at + start, view[offset + start:offset + start + part])
                        if progress is not None:
                            progress(part)
                    out = outputs.files[n]
                    out.left -= length
                    if out.left == 0:
                        outputs.finish(n)
                    total += length
            del data
        outputs.drain()
    except BaseException:
        for _loc, pending in window:
            pending.cancel()
        outputs.discard()
        raise
    return total
