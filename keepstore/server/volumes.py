"""Volume: one directory a `KeepServer` stores blocks in, with its storage classes."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..local import LocalStore
from .disk import FileOps, VolumeWriter, block_file, reclaim_temp_files

__all__ = ["Volume", "VolumeFull", "parse_volume", "rank_volumes"]

_CLASS = re.compile(r"[A-Za-z0-9_.-]+\Z")
_BLOCK_NAME = re.compile(r"[0-9a-f]{32}\Z")
_PREFIX = re.compile(r"[0-9a-f]{3}\Z")

log = logging.getLogger("keepstore.server")


class VolumeFull(OSError):
    """A volume cannot take another block (real ENOSPC, its capacity, or an injected fault)."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, "volume full", str(path))


@dataclasses.dataclass
class Volume:
    """A directory in the LocalStore layout (``<root>/<md5[0:3]>/<md5>``).

    *classes* are the storage classes the volume confirms (default ``("default",)``).
    *capacity* optionally caps the bytes of blocks it will hold (checked before each write,
    measured by a scan at start and kept up to date afterwards). *fsync* makes writes durable
    before they are acknowledged; *ops* is the file-system layer writes go through (tests
    replace it to record the order of calls or to simulate a power cut).

    Space is reserved for a write before its body is read (`reserve`) and given back when it
    ends (`release`), so concurrent writes never promise together more than the disk has:
    rather one 507 at once than several writes that all run out of space half-way.

    Args:
        path: The volume's directory.
        classes: The storage classes the volume confirms.
        capacity: The most bytes of blocks it will hold (None: no cap).
        fsync: Make writes durable before they are acknowledged.
        used: Bytes of blocks held (measured by a scan at start).
        pending: Bytes reserved by writes in progress.
        ops: The file-system layer writes go through (tests replace it).
    """

    path: Path
    classes: tuple[str, ...] = ("default",)
    capacity: int | None = None
    fsync: bool = True
    used: int = 0
    pending: int = 0  # bytes reserved by writes in progress
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)
    # With a capacity, the size of each block held: a block written twice (concurrent PUTs of
    # one block, a damaged copy replaced) is counted once.
    _sizes: dict[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    ops: FileOps = dataclasses.field(default_factory=FileOps, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.store = LocalStore(self.path, fsync=self.fsync)  # the same directory, for Python callers
        if self.capacity is not None:
            self._sizes = {md5: size for md5, size, _ in self.index()}
            self.used = sum(self._sizes.values())

    def find(self, md5: str) -> Path | None:
        """The regular file holding block *md5* (layered or flat layout), or None.

        A copy that cannot be looked up (say, an unreadable directory) is logged and passed
        over, so another volume's good copy can still be served.
        """
        if not _BLOCK_NAME.match(md5):
            return None
        for path in self.block_files(md5):
            try:
                if stat.S_ISREG(os.stat(path).st_mode):
                    return Path(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                log.warning("volume %s: cannot look up block %s: %s", self.path, md5, exc.strerror or exc)
        return None

    def block_files(self, md5: str) -> tuple[str, str]:
        """The names a copy of block *md5* may have here, in the order they are looked up: the
        layered one we write (`block_file`), then the flat one of the Arvados SDK's local_store.
        Strings, not Paths: they are looked up on every request."""
        root = os.fspath(self.path)
        return block_file(root, md5), f"{root}/{md5}"

    def index(self, prefix: str = "") -> Iterator[tuple[str, int, int]]:
        """``(md5, size, mtime_ns)`` of every block file whose md5 starts with *prefix*
        (regular files only: a directory under a block name is not a block)."""
        seen: set[str] = set()
        for directory, names in self._listing(prefix):
            for name in names:
                if name in seen or not name.startswith(prefix) or not _BLOCK_NAME.match(name):
                    continue
                try:
                    st = os.stat(directory / name, follow_symlinks=False)
                except OSError:  # removed while listing, or unreadable: not listed
                    continue
                if stat.S_ISREG(st.st_mode):
                    seen.add(name)
                    yield name, st.st_size, st.st_mtime_ns

    def _listing(self, prefix: str) -> Iterator[tuple[Path, list[str]]]:
        try:
            top = sorted(os.listdir(self.path))
        except OSError as exc:
            log.warning("volume %s: cannot list: %s", self.path, exc.strerror or exc)
            return
        for name in top:
            if _PREFIX.match(name) and name.startswith(prefix[:3]):
                try:
                    yield self.path / name, sorted(os.listdir(self.path / name))
                except NotADirectoryError:
                    continue
                except OSError as exc:
                    log.warning("volume %s: cannot list %s: %s", self.path, name, exc.strerror or exc)
        yield self.path, top  # the flat layout of the Arvados SDK's local_store

    def writer(self, md5: str) -> VolumeWriter:
        """A crash-safe writer of block *md5* on this volume."""
        return VolumeWriter(self.path, md5, fsync=self.fsync, ops=self.ops)

    def reclaim(self) -> int:
        """Remove the temp files of writers that died (kill -9); see `reclaim_temp_files`."""
        count = reclaim_temp_files(self.path)
        if count:
            log.info("volume %s: removed %d temp file(s) left by writers that died", self.path, count)
        return count

    def reserve(self, size: int) -> None:
        """Reserve *size* bytes for a write, or raise `VolumeFull` (by capacity and free space).

        Free space still counts the part of a write in progress that is already on disk, so
        near full the check errs towards refusing: the client writes elsewhere.
        """
        # Measured before taking the lock: a system call lets go of the interpreter lock, and a
        # thread holding the volume's lock while it waits to get that back (up to a switch
        # interval, with 16 connections busy) stalls every other write to the volume.
        free = shutil.disk_usage(self.path).free
        with self._lock:
            if self.capacity is not None and self.used + self.pending + size > self.capacity:
                raise VolumeFull(self.path)
            if free - self.pending < size:
                raise VolumeFull(self.path)
            self.pending += size

    def release(self, size: int, *, stored: bool, md5: str = "") -> None:
        """End a write that `reserve` admitted; *stored* when block *md5* is now on the volume."""
        with self._lock:
            self.pending -= size
            if stored:
                self.used += size - self._sizes.get(md5, 0)
                if self.capacity is not None:
                    self._sizes[md5] = size


    def forget(self, md5: str) -> None:
        """Block *md5* left this volume (trashed, deleted, quarantined): its bytes are free."""
        with self._lock:
            size = self._sizes.pop(md5, None)
            if size is not None:
                self.used -= size

    def remember(self, md5: str) -> None:
        """Block *md5* is back on this volume (untrashed): count its bytes again."""
        if self.capacity is None:
            return
        path = self.find(md5)
        if path is None:
            return
        with contextlib.suppress(FileNotFoundError):  # trashed again meanwhile: nothing to count
            size = path.stat().st_size
            with self._lock:
                self.used += size - self._sizes.get(md5, 0)
                self._sizes[md5] = size


def parse_volume(text: str, *, create: bool = True, fsync: bool = True) -> Volume:
    """``DIR`` or ``DIR:class[,class...]`` -> `Volume` (`ConfigError` on a bad spec), whose
    writes are made durable with *fsync*.

    A missing directory is made, unless *create* is false: then it is a `ConfigError` (a typo
    in ``keep serve --volume`` must not start an empty server that answers 404 to everything).
    """
    path: str = text
    classes: tuple[str, ...] = ("default",)
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and all(_CLASS.match(c) for c in tail.split(",")):
        path, classes = head, tuple(tail.split(","))
    elif sep and not tail:
        raise ConfigError(f"volume {text!r}: empty storage class list after ':'")
    if not path:
        raise ConfigError(f"volume {text!r}: no directory")
    if not create and not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"volume {path!r} {what}; create it first, or pass --create to have keep serve make it")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"volume {path!r}: cannot create directory: {exc.strerror}") from exc
    if not os.access(path, os.W_OK):
        raise ConfigError(f"volume {path!r} is not writable")
    return Volume(Path(path), classes, fsync=fsync)


def rank_volumes(md5: str, volumes: Sequence[Volume], wanted: Iterable[str]) -> list[Volume]:
    """Volumes to try for a new block: those with more of the *wanted* classes first, then a
    stable per-block order (rendezvous on md5 + path) so blocks spread over the volumes."""
    if len(volumes) == 1:  # (the commonest server: nothing to rank)
        return list(volumes)
    want = set(wanted)

    def key(v: Volume) -> tuple[int, str]:
        return (-len(want & set(v.classes)), hashlib.md5(f"{md5}{v.path}".encode(), usedforsecurity=False).hexdigest())

    return sorted(volumes, key=key)
