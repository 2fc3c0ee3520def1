"""`DatasetWriter`: stream files into packed blocks of at most 64 MiB and store their manifest."""

from __future__ import annotations

import concurrent.futures as cf
import io
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, KeepError, WriteError
from ..locator import MAX_BLOCK_SIZE
from ..store import BlockStore, PutResult
from .manifest import Manifest, Segment
from .receipt import BlockReceipt, DatasetError, Receipt

__all__ = ["DatasetWriter"]

_READ_CHUNK = 8 << 20


def _new_block(size: int) -> mmap.mmap:
    """Memory for one block. Anonymous pages are supplied zeroed as they are first written, so
    a block's memory grows with what is read into it; ``bytearray(size)`` would zero (and make
    resident) all 64 MiB at once, even for a dataset of three bytes."""
    return mmap.mmap(-1, size)


def _read_into(stream: BinaryIO, view: memoryview) -> int:
    """Fill *view* from *stream* (``readinto`` when it has one); return the bytes read, 0 at EOF."""
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        try:
            n = readinto(view)
        except NotImplementedError:  # io.RawIOBase's own readinto: the subclass has only read()
            readinto = None
    if readinto is None:
        chunk = stream.read(len(view))
        n = None if chunk is None else len(chunk)
        if n:
            view[:n] = chunk
    if n is None:  # a non-blocking stream with nothing ready: reading on would drop data
        raise BlockingIOError(f"{stream!r} is non-blocking and had no data ready")
    return int(n)


def _block_receipt(result: PutResult) -> BlockReceipt:
    return BlockReceipt(str(result.locator), result.locator.size, result.replicas, tuple(result.services),
                        dict(result.storage_classes))


class DatasetWriter:
    """Stream files into blocks of at most 64 MiB and store a manifest block for them.

    Small files are packed together; at most ``max_in_flight`` full blocks wait for upload
    at any time (so memory stays near ``(max_in_flight + 1) * block_size`` whatever the input).
    ``finish()`` stores the manifest and returns a `Receipt` whose ``locator`` names the dataset.
    """

    def __init__(
        self,
        store: BlockStore,
        *,
        copies: int | None = None,
        storage_classes: Iterable[str] | None = None,
        max_in_flight: int = 2,
        block_size: int = MAX_BLOCK_SIZE,
        progress: Callable[[int], Any] | None = None,
        read_progress: Callable[[int], Any] | None = None,
    ) -> None:
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ConfigError(f"block_size must be between 1 and {MAX_BLOCK_SIZE}, got {block_size}")
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.store = store
        self.copies = copies
        self.storage_classes = list(storage_classes) if storage_classes else None
        self.block_size = block_size
        self._progress = progress  # called with a block's size once the store has it
        self._read_progress = read_progress  # called with each chunk (at most 8 MiB) read in
        # The open block: one buffer of block_size, filled in place by readinto and handed to the
        # upload as it is (no copy), so memory holds max_in_flight blocks plus this one.
        self._buffer: mmap.mmap | None = None
        self._fill = 0
        self._failed: BaseException | None = None  # an add that failed part-way: no receipt
        self._pending: list[tuple[str, int, int]] = []  # (path, offset in buffer, length) for the open block
        self._files: dict[str, list[tuple[int, int, int]]] = {}  # path -> [(block index, offset, length)]
        self._dirs: set[str] = set()
        self._results: dict[int, PutResult] = {}
        self._futures: dict[int, cf.Future[PutResult]] = {}
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._executor = cf.ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="keep-dataset")
        self._next_block = 0
        self._finished: Receipt | None = None
        self._bytes = 0

    # -- adding content -----------------------------------------------------------------------

    def add_stream(self, path: str, stream: BinaryIO) -> int:
        """Add a file at *path* (``dir/name`` inside the dataset) from a binary stream; return its size."""
        path = self._check_new(path)
        pieces = self._files.setdefault(path, [])
        total = 0
        try:
            while True:
                if self._buffer is None:
                    self._buffer = _new_block(self.block_size)
                want = min(self.block_size - self._fill, _READ_CHUNK)
                with memoryview(self._buffer) as whole, whole[self._fill:self._fill + want] as part:
                    n = _read_into(stream, part)
                if not n:
                    break
                pieces.append((self._next_block, self._fill, n))
                self._fill += n
                total += n
                if self._read_progress is not None:
                    self._read_progress(n)
                if self._fill >= self.block_size:
                    self._flush()
        except BaseException as exc:
            # Part of the file may be in a block already: a receipt would name a truncated file.
            self._failed = exc
            raise
        self._bytes += total
        return total

    def add_bytes(self, path: str, data: bytes | bytearray | memoryview) -> int:
        """Add a file whose content is *data*."""
        return self.add_stream(path, io.BytesIO(bytes(data)))

    def add_file(self, source: str | os.PathLike[str], path: str | None = None) -> int:
        """Add a local file, stored as *path* (default: its base name)."""
        source = Path(source)
        with open(source, "rb") as f:
            return self.add_stream(path if path is not None else source.name, f)

    def add_directory(self, path: str) -> None:
        """Record a directory (kept even when empty)."""
        self._dirs.add(self._norm(path))

    def add_tree(self, source: str | os.PathLike[str], prefix: str = "") -> int:
        """Add every file and directory under *source*, stored under *prefix*; return bytes added."""
        source = Path(source)
        if not source.is_dir():
            raise NotADirectoryError(str(source))
        total = 0
        base = self._norm(prefix) if prefix else ""
        if base:
            self._dirs.add(base)
        for root, dirnames, filenames in os.walk(source):
            dirnames.sort()
            rel = os.path.relpath(root, source)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            here = "/".join(p for p in (base, rel) if p)
            if here:
                self._dirs.add(here)
            for name in sorted(filenames):
                full = os.path.join(root, name)
                if os.path.islink(full) and not os.path.exists(full):
                    raise FileNotFoundError(f"{full}: dangling symbolic link")
                total += self.add_file(full, "/".join(p for p in (here, name) if p))
        return total

    @staticmethod
    def _norm(path: str) -> str:
        parts = [p for p in path.replace(os.sep, "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise DatasetError(f"invalid dataset path {path!r}")
        return "/".join(parts)

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise KeepError(f"dataset writer cannot go on after a failed add ({self._failed!r}); "
                            f"start a new one") from self._failed

    def _check_new(self, path: str) -> str:
        if self._finished is not None:
            raise KeepError("dataset writer is already finished")
        self._check_usable()
        path = self._norm(path)
        if path in self._files or path in self._dirs:
            raise DatasetError(f"{path!r} is already in the dataset")
        return path

    # -- uploading -------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._buffer is None or not self._fill:
            return
        data = memoryview(self._buffer)[:self._fill]  # keeps the block's memory until uploaded
        self._buffer, self._fill = None, 0
        index = self._next_block
        self._next_block += 1
        self._collect(block=False)
        self._slots.acquire()
        try:
            future = self._executor.submit(self._put, data)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures[index] = future

    def _put(self, data: memoryview) -> PutResult:
        result = self.store.put_block(data, copies=self.copies, storage_classes=self.storage_classes)
        if self._progress is not None:
            self._progress(len(data))
        return result

    def _collect(self, *, block: bool) -> None:
        for index, future in list(self._futures.items()):
            if block or future.done():
                self._results[index] = future.result()  # re-raises the upload's WriteError
                del self._futures[index]

    def finish(self) -> Receipt:
        """Upload what is left, store the manifest block, and return the receipt."""
        if self._finished is not None:
            return self._finished
        self._check_usable()
        try:
            self._flush()
            self._collect(block=True)
        finally:
            self._executor.shutdown(wait=True)
        files = {path: [Segment(self._results[i].locator, off, n) for i, off, n in pieces]
                 for path, pieces in self._files.items()}
        manifest = Manifest.from_files(files, self._dirs)
        text = manifest.text.encode("utf-8")
        if len(text) > MAX_BLOCK_SIZE:
            raise WriteError(f"manifest of {len(text)} bytes does not fit one block", wanted=self.copies or 0)
        stored = self.store.put_block(text, copies=self.copies, storage_classes=self.storage_classes)
        blocks = tuple(_block_receipt(self._results[i]) for i in sorted(self._results))
        self._finished = Receipt(
            locator=str(stored.locator),
            portable_data_hash=manifest.portable_data_hash(),
            files=len(files),
            bytes=self._bytes,
            blocks=blocks,
            manifest_block=_block_receipt(stored),
        )
        return self._finished

    def abort(self) -> None:
        """Stop: cancel uploads not yet started and wait for running ones."""
        for future in self._futures.values():
            future.cancel()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
