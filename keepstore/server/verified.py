"""Verified files: which block files were hashed whole and matched, by identity, so they can be sent unread."""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from .volumes import Volume

__all__ = ["FileKey", "OpenCopy", "VerifiedFiles", "cached_copy", "open_copy", "send_file"]

log = logging.getLogger("keepstore.server")

FileKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def file_key(st: os.stat_result) -> FileKey:
    """What identifies one version of a file. The ctime changes with every write, truncate,
    rename, chmod or utime, and no caller can set it back (short of the system clock): a file
    changed since it was hashed has another key even when its mtime was restored by hand."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class VerifiedFiles:
    """The block files found to hash to their names, each with the `FileKey` it had just
    before it was read: while a file still has that key it holds the bytes that were hashed,
    unless something wrote to the disk beneath the file system (bit rot, a raw device write),
    which the scrubber and every client's own md5 check catch. Bounded: beyond *capacity*
    entries the oldest are forgotten (and hashed again when next served).

    Small verified files may also be *kept*: their bytes, held with the key they were read
    under, up to *kept_bytes* in all (oldest dropped first), so a GET of a hot small block
    costs one ``stat`` instead of open, fstat, read and close. Kept bytes are the bytes that
    were read from the verified file (or, for a file a PUT just wrote, the body it was written
    from, which hashed to its name), and are served only while the file has that key.

    Args:
        capacity: How many files' keys to remember.
        kept_bytes: How many bytes of small files' contents to keep (0: none).
    """

    def __init__(self, capacity: int = 65536, kept_bytes: int = 16 << 20) -> None:
        self.capacity = capacity
        self.kept_bytes = kept_bytes
        self._lock = threading.Lock()
        self._keys: collections.OrderedDict[str, FileKey] = collections.OrderedDict()
        self._kept: collections.OrderedDict[str, tuple[FileKey, bytes]] = collections.OrderedDict()
        self._kept_total = 0
        self.hits = self.misses = 0  # counted for tests and figures
        self.kept_hits = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def holds(self, path: str, key: FileKey) -> bool:
        """Whether the file at *path*, with *key* now, was verified with that key."""
        with self._lock:
            good = self._keys.get(path) == key
            if good:
                self.hits += 1
            else:
                self.misses += 1
            return good

    def add(self, path: str, key: FileKey, data: bytes | None = None) -> None:
        """The file at *path* hashed to its name; *key* is what it had before it was read.
        *data*: its bytes, when the caller has them (a PUT's body, which hashed to the name and
        is what the file was written from), kept as `keep` keeps them."""
        with self._lock:
            self._keys[path] = key
            self._keys.move_to_end(path)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        if data is not None:
            self.keep(path, key, data)

    def keep(self, path: str, key: FileKey, data: bytes) -> None:
        """Keep *data*, read from the file at *path* while it had *key* and was verified with
        that key (the caller checked `holds` before reading), for `kept`."""
        if len(data) > self.kept_bytes:
            return
        with self._lock:
            if self._keys.get(path) != key:  # forgotten or changed since it was checked
                return
            old = self._kept.pop(path, None)
            if old is not None:
                self._kept_total -= len(old[1])
            self._kept[path] = (key, data)
            self._kept_total += len(data)
            while self._kept_total > self.kept_bytes:
                _, (_, dropped) = self._kept.popitem(last=False)
                self._kept_total -= len(dropped)

    def kept(self, path: str, key: FileKey) -> bytes | None:
        """The bytes kept for the file at *path*, if it still has the *key* they were read under
        (a hit, as `holds`; a miss is not counted, as the caller then opens the file and asks
        `holds`)."""
        with self._lock:
            entry = self._kept.get(path)
            if entry is None or entry[0] != key or self._keys.get(path) != key:
                return None
            self._kept.move_to_end(path)
            self.hits += 1
            self.kept_hits += 1
            return entry[1]

    def forget(self, path: str | os.PathLike[str]) -> None:
        """The file at *path* was renamed away or found damaged: hash it again if it comes back."""
        with self._lock:
            path = os.fspath(path)
            self._keys.pop(path, None)
            old = self._kept.pop(path, None)
            if old is not None:
                self._kept_total -= len(old[1])

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
            self._kept.clear()
            self._kept_total = 0


class OpenCopy(NamedTuple):
    """A block file opened for sending: its volume, path, descriptor and stat."""

    volume: Volume
    path: str
    fd: int
    st: os.stat_result


def open_copy(volumes: Sequence[Volume], md5: str, size: int) -> OpenCopy | None:
    """The first volume's regular file of block *md5* with *size* bytes, opened (layered
    layout, then flat, as `Volume.find`), or None. A copy that cannot be opened is logged and
    passed over, as `Blocks.locate` does. The caller closes the descriptor."""
    for volume in volumes:
        for path in volume.block_files(md5):
            try:  # O_NONBLOCK: a FIFO under a block's name must not hang the thread
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                log.warning("volume %s: cannot open block %s: %s", volume.path, md5, exc.strerror or exc)
                continue
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size == size:
                return OpenCopy(volume, path, fd, st)
            os.close(fd)
            if stat.S_ISREG(st.st_mode):  # another size: not this block, and not another volume's path
                break
    return None


def cached_copy(volumes: Sequence[Volume], md5: str, size: int, verified: VerifiedFiles) -> bytes | None:
    """The kept bytes (`VerifiedFiles.kept`) of the copy `open_copy` would open, found by
    ``stat`` alone; None when that copy is not kept under its key now (or cannot be
    looked at), and the caller opens it instead."""
    for volume in volumes:
        for path in volume.block_files(md5):
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:  # open_copy logs it, and passes it over
                return None
            if stat.S_ISREG(st.st_mode) and st.st_size == size:
                return verified.kept(path, file_key(st))
            if stat.S_ISREG(st.st_mode):  # another size: as open_copy, not another volume's path
                return None
    return None


def send_file(sock: socket.socket, fd: int, count: int, *, idle: float, deadline: float) -> Iterator[int]:
    """Send *count* bytes of file *fd* from its start with ``sendfile`` (no copy through
    Python), yielding the bytes of each send; each wait for the socket is bounded by *idle*
    seconds and the whole by *deadline* (monotonic): `TimeoutError` when the reader is too
    slow. Ends early (fewer than *count* sent) only when the file was shorter. The socket must
    have a timeout (that is, be non-blocking underneath, as Python makes it)."""
    offset = 0
    out = sock.fileno()
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    while offset < count:
        try:
            sent = os.sendfile(out, fd, offset, count - offset)
        except BlockingIOError:  # the socket's buffer is full: wait below
            sent = -1
        if sent == 0:
            return  # the file ended early
        if sent > 0:
            offset += sent
            yield sent
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("reader too slow: response cut off")
        if not poller.poll(min(idle, remaining) * 1000):
            raise TimeoutError("reader stalled: response cut off")
