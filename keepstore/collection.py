"""Datasets: files and directories written as blocks plus a manifest block, and read back."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import json
import mmap
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ConfigError, KeepError, WriteError
from .locator import MAX_BLOCK_SIZE, Locator, LocatorLike
from .manifest import Manifest, ManifestError, ManifestFile, Segment
from .store import BlockStore, PutResult

__all__ = ["BlockReceipt", "DatasetError", "DatasetReader", "DatasetWriter", "KeepFile", "Receipt", "atomic_write",
           "open_dataset"]

_READ_CHUNK = 8 << 20


class DatasetError(KeepError, ValueError):
    """A dataset path that cannot be used: invalid, or already in the dataset."""


@dataclasses.dataclass(frozen=True)
class BlockReceipt:
    """One stored block: its locator, the replicas counted and the services that confirmed it."""

    locator: str
    size: int
    replicas: int
    services: tuple[str, ...] = ()
    storage_classes: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What a dataset write stored; ``locator`` is the dataset's address."""

    locator: str
    portable_data_hash: str
    files: int
    bytes: int
    blocks: tuple[BlockReceipt, ...]
    manifest_block: BlockReceipt

    @property
    def min_replicas(self) -> int:
        """The lowest replica count over every block, the manifest block included."""
        return min([b.replicas for b in self.blocks] + [self.manifest_block.replicas])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["min_replicas"] = self.min_replicas
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Receipt":
        d = json.loads(text)
        d.pop("min_replicas", None)
        d["blocks"] = tuple(BlockReceipt(**{**b, "services": tuple(b["services"])}) for b in d["blocks"])
        mb = d["manifest_block"]
        d["manifest_block"] = BlockReceipt(**{**mb, "services": tuple(mb["services"])})
        return cls(**d)


def atomic_write(dest: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Create or replace the file *dest* with what ``write(f)`` writes, atomically.

    The data goes to a new, uniquely named file beside *dest* (created with mode 0666 less the
    umask, like any new file), is fsynced, and is renamed over *dest*; on any failure the temp
    file is removed and *dest* is untouched. OSErrors name *dest*, not the temp file.
    """
    dest = os.fspath(dest)
    directory = os.path.dirname(os.path.abspath(dest))
    while True:
        temp = os.path.join(directory, f".keep-{secrets.token_hex(8)}.partial")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue  # 64 random bits taken already: draw again
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, dest) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


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


class DatasetReader:
    """A dataset opened by its locator: list files, open them, or write the tree out."""

    def __init__(self, store: BlockStore, locator: LocatorLike, *, readahead: int = 2) -> None:
        self.store = store
        self.locator = Locator.parse(locator)
        self.readahead = readahead
        raw = store.get(self.locator)
        try:
            self.manifest = Manifest.parse(raw)
        except ManifestError as exc:
            raise ManifestError(f"block {self.locator} is not a dataset manifest: {exc}") from None

    @classmethod
    def from_manifest(cls, store: BlockStore, manifest: Manifest | str) -> "DatasetReader":
        reader = cls.__new__(cls)
        reader.store = store
        reader.manifest = manifest if isinstance(manifest, Manifest) else Manifest.parse(manifest)
        reader.locator = Locator.for_data(str(reader.manifest).encode("utf-8"))
        reader.readahead = 2
        return reader

    def listdir(self, path: str = "") -> list[str]:
        return self.manifest.listdir(path)

    def files(self) -> list[ManifestFile]:
        return list(self.manifest.walk_files())

    def stat(self, path: str) -> ManifestFile:
        return self.manifest.file(path)

    def open(self, path: str, mode: str = "rb") -> "KeepFile":
        """A seekable, read-only binary file over the dataset file at *path*."""
        if mode not in ("r", "rb"):
            raise ValueError(f"datasets are read-only and binary; mode {mode!r} is not supported")
        return KeepFile(self.store, self.manifest.file(path), readahead=self.readahead)

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def extract(self, dest: str | os.PathLike[str], *, progress: Callable[[int], Any] | None = None) -> int:
        """Write every file and directory under *dest*; return the bytes written.

        Each file is written to a temp name and renamed, so a failed extract leaves no torn file.
        """
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        root = os.path.abspath(dest)

        def inside(rel: str) -> Path:
            # Manifest paths are checked when parsed or built (no "..", no absolute names);
            # this is the last line of defence before writing.
            target = os.path.abspath(os.path.join(root, rel))
            if os.path.commonpath([root, target]) != root:
                raise DatasetError(f"dataset path {rel!r} would be written outside {dest}")
            return Path(target)

        for d in sorted(self.manifest.directories):
            inside(d).mkdir(parents=True, exist_ok=True)
        total = 0
        for mf in self.manifest.walk_files():
            target = inside(mf.path)
            target.parent.mkdir(parents=True, exist_ok=True)

            def copy(out: BinaryIO, path: str = mf.path) -> None:
                nonlocal total
                with self.open(path) as src:
                    while chunk := src.read(_READ_CHUNK):
                        out.write(chunk)
                        total += len(chunk)
                        if progress is not None:
                            progress(len(chunk))

            atomic_write(target, copy)
        return total


def open_dataset(store: BlockStore, locator: LocatorLike) -> DatasetReader:
    """Open the dataset whose manifest block is *locator*."""
    return DatasetReader(store, locator)


class KeepFile(io.RawIOBase):
    """A read-only, seekable file over a manifest file's block segments.

    Reads across block boundaries; keeps the last block fetched; asks the store to prefetch
    the next blocks for sequential readers (``store.prefetch`` when the store has one).
    """

    def __init__(self, store: BlockStore, file: ManifestFile, *, readahead: int = 2) -> None:
        super().__init__()
        self.store = store
        self.file = file
        self.name = file.path
        self._size = file.size
        self._pos = 0
        self._starts: list[int] = []
        offset = 0
        for seg in file.segments:
            self._starts.append(offset)
            offset += seg.length
        self._cached: tuple[str, bytes] | None = None
        self._readahead = readahead
        self._prefetched: set[int] = set()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def close(self) -> None:
        self._cached = None  # the last block fetched: up to 64 MiB
        super().close()

    @property
    def size(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]  # io.IOBase's own check: ValueError
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _block(self, index: int) -> bytes:
        loc = self.file.segments[index].locator
        key = str(loc)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        data = self.store.get(loc)
        self._cached = (key, data)
        self._prefetch_after(index)
        return data

    def _prefetch_after(self, index: int) -> None:
        prefetch = getattr(self.store, "prefetch", None)
        if prefetch is None or self._readahead <= 0:
            return
        wanted = [i for i in range(index + 1, min(index + 1 + self._readahead, len(self.file.segments)))
                  if i not in self._prefetched]
        if wanted:
            self._prefetched.update(wanted)
            prefetch([self.file.segments[i].locator for i in wanted])

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        done = 0
        while done < want:
            i = self._segment_at(self._pos)
            seg = self.file.segments[i]
            within = self._pos - self._starts[i]
            take = min(want - done, seg.length - within)
            block = self._block(i)
            start = seg.offset + within
            view[done:done + take] = block[start:start + take]
            done += take
            self._pos += take
        return done

    def _segment_at(self, pos: int) -> int:
        import bisect

        return bisect.bisect_right(self._starts, pos) - 1

    def readall(self) -> bytes:
        out = bytearray(max(0, self._size - self._pos))
        n = self.readinto(out)
        return bytes(out[:n])

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(min(size, max(0, self._size - self._pos)))
        n = self.readinto(out)
        return bytes(out[:n])
