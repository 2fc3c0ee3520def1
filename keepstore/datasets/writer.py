"""`DatasetWriter`: stream files into packed blocks of at most 64 MiB and store their manifest."""

from __future__ import annotations

import concurrent.futures as cf
import io
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import ConfigError, KeepError, WriteError
from ..locator import MAX_BLOCK_SIZE, Locator, LocatorLike
from ..store import BlockStore, PutResult
from .inventory import Entry, dataset_path, walk_tree
from .manifest import Manifest, ManifestFile, Segment
from .receipt import BlockReceipt, DatasetError, Receipt
from .stored import StoredCheck

if TYPE_CHECKING:
    from .reader import DatasetReader

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


def _block_receipt(result: PutResult, sent: bool = True) -> BlockReceipt:
    return BlockReceipt(str(result.locator), result.locator.size, result.replicas, tuple(result.services),
                        dict(result.storage_classes), sent)


Piece = tuple[int, int, int] | Segment  # (block index, offset, length) of this writer's blocks, or a reference
OnBlock = Callable[[int, PutResult, bool], Any]  # (block index, result, sent) once a block is stored


class DatasetWriter:
    """Stream files into blocks of at most 64 MiB and store a manifest block for them.

    Small files are packed together; at most ``max_in_flight`` full blocks wait for upload
    at any time (so memory stays near ``(max_in_flight + 1) * block_size`` whatever the input).
    ``finish()`` stores the manifest and returns a `Receipt` whose ``locator`` names the dataset.

    Blocks are the fixed-size pieces of everything added, in order, so the same files added in
    the same order make the same blocks. Before a block is sent, *skip_stored* (a `StoredCheck`;
    True: one for this store and these copies; False: none) asks whether it is stored already
    with enough replicas; if so it is not sent, and the receipt counts the replicas the HEADs
    confirmed. *known* maps block numbers to blocks stored by an earlier run of the same
    writing (see `keepstore.datasets.resume`): their bytes are skipped over, not read.
    *on_block* is called as ``on_block(index, result, sent)`` as each other block is stored.

    Args:
        store: The store the blocks and the manifest go to.
        copies: Replicas wanted of every block (default: the store's).
        storage_classes: Storage classes wanted (default: the store's).
        max_in_flight: Full blocks waiting for upload at most.
        block_size: The size of a full block (at most 64 MiB).
        progress: Called with the number of bytes each time data is stored.
        skip_stored: A `StoredCheck` asked before each block is sent (True: one made here; False: always send).
        known: Block numbers mapped to blocks an earlier run of the same write stored (resuming).
        on_block: Called as ``on_block(index, result, sent)`` as each block is stored.
        read_progress: Called with the number of bytes of each chunk read in.
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
        skip_stored: StoredCheck | bool = True,
        known: Mapping[int, PutResult] | None = None,
        on_block: OnBlock | None = None,
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
        self._progress = progress
        self._own_check = skip_stored is True
        self._check = StoredCheck(store, copies=copies, storage_classes=self.storage_classes) \
            if skip_stored is True else (skip_stored or None)
        self._known = dict(known or {})
        self._on_block = on_block
        self._read_progress = read_progress  # called with each chunk (at most 8 MiB) read in
        # The open block: one buffer of block_size, filled in place by readinto and handed to the
        # upload as it is (no copy), so memory holds max_in_flight blocks plus this one.
        self._buffer: mmap.mmap | None = None
        self._fill = 0
        self._virtual: PutResult | None = None  # the open block when it is a known one (nothing read)
        self._failed: BaseException | None = None  # an add that failed part-way: no receipt
        self._files: dict[str, list[Piece]] = {}
        self._dirs: set[str] = set()
        self._results: dict[int, tuple[PutResult, bool]] = {}  # block index -> (result, sent)
        self._futures: dict[int, cf.Future[tuple[PutResult, bool]]] = {}
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._executor = cf.ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="keep-dataset")
        self._next_block = 0
        self._finished: Receipt | None = None
        self._bytes = 0

    # -- adding content -----------------------------------------------------------------------

    def add_stream(self, path: str, stream: BinaryIO) -> int:
        """Add a file at *path* (``dir/name`` inside the dataset) from a binary stream; return its size."""
        return self._add(self._check_new(path), stream, None)

    def _add(self, path: str, stream: BinaryIO, size: int | None) -> int:
        """Read *stream* into blocks; with its *size* known, the parts of known blocks are
        seeked over instead of read."""
        pieces = self._files.setdefault(path, [])
        total = 0
        try:
            while True:
                if self._fill == 0 and self._virtual is None and self._next_block in self._known:
                    self._virtual = self._known[self._next_block]
                if self._virtual is not None:
                    if size is None:
                        raise DatasetError(f"{path!r}: the resumed layout needs its size; start again without resuming")
                    n = min(self._virtual.locator.size - self._fill, size - total)
                    if n <= 0:
                        break
                    stream.seek(n, io.SEEK_CUR)
                    pieces.append((self._next_block, self._fill, n))
                    self._fill += n
                    total += n
                    if self._progress is not None:
                        self._progress(n)
                    if self._read_progress is not None:  # passed over unread, but done with all the same
                        self._read_progress(n)
                    if self._fill == self._virtual.locator.size:
                        self._results[self._next_block] = (self._virtual, False)
                        self._next_block += 1
                        self._fill, self._virtual = 0, None
                    continue
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
        return self._add(self._check_new(path), io.BytesIO(bytes(data)), len(data))

    def add_file(self, source: str | os.PathLike[str], path: str | None = None, *,
                 expect: Entry | None = None) -> int:
        """Add a local file, stored as *path* (default: its base name).

        With *expect* (the file as listed before, e.g. by a resume plan) the file must still have
        that size, mtime, device and inode when opened, else `DatasetError` (it changed meanwhile).
        """
        source = Path(source)
        dest = self._check_new(path if path is not None else source.name)
        with open(source, "rb") as f:
            st = os.fstat(f.fileno())
            if expect is not None and Entry.of(str(source), dest, st).identity != expect.identity:
                self._failed = DatasetError(f"{source} changed while it was being stored; run the put again")
                raise self._failed
            return self._add(dest, f, st.st_size if stat.S_ISREG(st.st_mode) else None)

    def add_directory(self, path: str) -> None:
        """Record a directory (kept even when empty)."""
        self._dirs.add(self._norm(path))

    def add_tree(self, source: str | os.PathLike[str], prefix: str = "") -> int:
        """Add every file and directory under *source*, stored under *prefix*; return bytes added."""
        total = 0
        for item in walk_tree(source, prefix):
            if isinstance(item, str):
                self._dirs.add(item)
            else:
                total += self.add_file(item.source, item.path)
        return total

    # -- datasets from datasets: references to stored blocks, no data moved --------------------

    def add_dataset(self, locator: LocatorLike, prefix: str = "") -> int:
        """Add every file and directory of the dataset at *locator* (under *prefix*) by
        reference to its blocks: only its manifest is fetched. Returns the bytes added."""
        from .reader import DatasetReader

        with DatasetReader(self.store, locator) as reader:
            return self.add_from(reader, "", prefix or None)

    def add_from(self, reader: "DatasetReader", path: str, dest: str | None = None) -> int:
        """Add the file or directory *path* of *reader*'s dataset (``""``: all of it) as *dest*
        (default: the same path) by reference to its blocks. Returns the bytes added."""
        manifest = reader.manifest
        path = path.strip("/")
        target = self._norm(dest) if dest else (path if path else "")
        if path and not manifest.is_dir(path):
            return self._add_reference(manifest.file(path), target or path)
        total = 0
        prefix = f"{path}/" if path else ""
        for d in manifest.directories:
            if not path or d == path or d.startswith(prefix):
                rel = d[len(prefix):] if d != path else ""
                joined = "/".join(p for p in (target, rel) if p)
                if joined:
                    self._dirs.add(joined)
        if target:
            self._dirs.add(target)
        for mf in manifest.walk_files():
            if not path or mf.path.startswith(prefix):
                total += self._add_reference(mf, "/".join(p for p in (target, mf.path[len(prefix):]) if p))
        return total

    def _add_reference(self, mf: ManifestFile, dest: str) -> int:
        dest = self._check_new(dest)
        self._files[dest] = [seg for seg in mf.segments if seg.length]
        size = mf.size
        self._bytes += size
        return size

    def remove(self, path: str) -> int:
        """Drop the file, or the directory and everything under it, at *path*; return how many
        files were dropped. `DatasetError` when nothing is there."""
        path = self._norm(path)
        prefix = path + "/"
        files = [p for p in self._files if p == path or p.startswith(prefix)]
        dirs = [d for d in self._dirs if d == path or d.startswith(prefix)]
        if not files and not dirs:
            raise DatasetError(f"{path!r} is not in the dataset")
        for p in files:
            del self._files[p]
        self._dirs.difference_update(dirs)
        return len(files)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        path = path.strip("/")
        return path in self._files or path in self._dirs

    def is_directory(self, path: str) -> bool:
        """True when *path* is a directory of the dataset so far."""
        return path.strip("/") in self._dirs

    @staticmethod
    def _norm(path: str) -> str:
        return dataset_path(path)

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
        if self._virtual is not None:
            raise DatasetError("the files ended inside a block stored by an earlier run: they changed; "
                               "run the put again")
        if self._buffer is None or not self._fill:
            return
        data = memoryview(self._buffer)[:self._fill]  # keeps the block's memory until uploaded
        self._buffer, self._fill = None, 0
        index = self._next_block
        self._next_block += 1
        self._collect(block=False)
        self._slots.acquire()
        try:
            future = self._executor.submit(self._put, index, data)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures[index] = future

    def _store(self, data: memoryview | bytes) -> tuple[PutResult, bool]:
        """Skip *data* when it is stored with enough replicas already, else send it."""
        if self._check is not None:
            found = self._check.confirm(Locator.for_data(data))
            if found is not None:
                return found, False
        result = self.store.put_block(data, copies=self.copies, storage_classes=self.storage_classes)
        if self._check is not None:
            self._check.learn(result.locator)
        return result, True

    def _put(self, index: int, data: memoryview) -> tuple[PutResult, bool]:
        result, sent = self._store(data)
        if self._progress is not None:
            self._progress(len(data))
        if self._on_block is not None:
            self._on_block(index, result, sent)
        return result, sent

    def _collect(self, *, block: bool) -> None:
        for index, future in list(self._futures.items()):
            if block or future.done():
                self._results[index] = future.result()  # re-raises the upload's WriteError
                del self._futures[index]

    def _references(self) -> list[BlockReceipt]:
        """Receipts for the blocks referenced from other datasets, with the replicas HEADs confirm
        now; `DatasetError` for one that no service confirms (never report it as stored)."""
        mine = {r.locator.md5 for r, _sent in self._results.values()}
        wanted: dict[str, Locator] = {}
        for pieces in self._files.values():
            for piece in pieces:
                if isinstance(piece, Segment) and piece.locator.md5 not in mine:
                    wanted.setdefault(piece.locator.md5, piece.locator)
        if not wanted:
            return []
        check = StoredCheck(self.store, copies=self.copies)
        try:
            counted = check.count_many(wanted.values())
        finally:
            check.close()
        for found in counted:
            if found.replicas < 1:
                raise DatasetError(f"block {found.locator.stripped()} of a dataset added by reference is not "
                                   f"confirmed stored (missing, or its signature is invalid or expired)")
        return [_block_receipt(found, sent=False) for found in counted]

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
        files = {path: [p if isinstance(p, Segment) else Segment(self._results[p[0]][0].locator, p[1], p[2])
                        for p in pieces]
                 for path, pieces in self._files.items()}
        manifest = Manifest.from_files(files, self._dirs)
        text = manifest.text.encode("utf-8")
        if len(text) > MAX_BLOCK_SIZE:
            raise WriteError(f"manifest of {len(text)} bytes does not fit one block", wanted=self.copies or 0)
        references = self._references()
        stored, manifest_sent = self._store(text)
        self._close_check()
        ours = [self._results[i] for i in sorted(self._results)]
        blocks = tuple(_block_receipt(r, sent) for r, sent in ours) + tuple(references)
        sent_bytes = sum(r.locator.size for r, sent in ours if sent)
        skipped = sum(r.locator.size for r, sent in ours if not sent)
        self._finished = Receipt(
            locator=str(stored.locator),
            portable_data_hash=manifest.portable_data_hash(),
            files=len(files),
            bytes=self._bytes,
            blocks=blocks,
            manifest_block=_block_receipt(stored, manifest_sent),
            bytes_sent=sent_bytes + (len(text) if manifest_sent else 0),
            bytes_skipped=skipped + (0 if manifest_sent else len(text)),
        )
        return self._finished

    def abort(self) -> None:
        """Stop: cancel uploads not yet started and wait for running ones."""
        for future in self._futures.values():
            future.cancel()
        self._executor.shutdown(wait=True)
        self._close_check()

    def _close_check(self) -> None:
        if self._own_check and self._check is not None:
            self._check.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
