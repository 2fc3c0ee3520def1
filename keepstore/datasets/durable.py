"""Making many new files durable at once: one syncfs(2) per filesystem where that is reliable."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

__all__ = ["Durability", "fsync_path", "syncfs_device"]

# Filesystems whose syncfs(2) writes every dirty file out and commits it as fsync(2) would (the
# kernel's sync_filesystem plus the filesystem's own sync_fs). Anything else (FUSE, overlayfs,
# network filesystems, unknown ones) gets one fsync per file: syncfs there may not reach the
# server or the daemon that fsync would.
_SYNCFS_DURABLE = frozenset({
    0xEF53,      # ext2/3/4
    0x58465342,  # XFS
    0x9123683E,  # btrfs
    0xF2F52010,  # F2FS
    0x2FC12FC1,  # ZFS
})


@functools.cache
def _libc() -> "ctypes.CDLL | None":
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: only an extract needs it, and it costs a few ms at start-up

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to load (static interpreter): fsync per file
        return None
    return libc if hasattr(libc, "syncfs") and hasattr(libc, "statfs") else None


def _syncfs_is_durable(directory: str) -> bool:
    libc = _libc()
    if libc is None:
        return False
    import ctypes

    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(directory), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value in _SYNCFS_DURABLE  # f_type is its first field


def syncfs_device(directory: str) -> int | None:
    """The device of *directory* when one syncfs(2) there makes its new files durable, else None."""
    return os.stat(directory).st_dev if _syncfs_is_durable(directory) else None


def fsync_path(path: str) -> None:
    """fsync the file (or directory) at *path*, reopened read-only: its writer has closed it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(directory: str) -> None:
    libc = _libc()
    assert libc is not None  # syncfs_device said yes
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), directory)
    finally:
        os.close(fd)


class Durability:
    """Makes batches of closed files durable before they are renamed into place.

    Where `syncfs_device` gives a device, the files of one batch on it (at least
    *syncfs_min_files* of them) are covered by one syncfs(2) of that filesystem: one journal
    commit instead of one per file (it also writes out whatever else is dirty there). Other
    files are fsynced one by one, *threads* at a time, so a journalling filesystem can commit
    them together.
    """

    def __init__(self, threads: int = 8, *, syncfs_min_files: int = 4,
                 device: Callable[[str], int | None] | None = None,
                 fsync: Callable[[str], None] | None = None, syncfs: Callable[[str], None] | None = None) -> None:
        """*device*, *fsync* and *syncfs* default to `syncfs_device`, `fsync_path` and syncfs(2)."""
        self.threads = threads
        self.syncfs_min_files = syncfs_min_files
        self._device_of = device or syncfs_device
        self._fsync = fsync or fsync_path
        self._syncfs = syncfs or _syncfs
        self._devices: dict[str, int | None] = {}
        self._pool: cf.ThreadPoolExecutor | None = None

    def sync(self, files: Sequence[tuple[str, str]]) -> None:
        """Make every ``(path, the directory it is in)`` of *files* durable."""
        groups: dict[int | None, list[tuple[str, str]]] = {}
        for path, directory in files:
            try:
                device = self._devices[directory]
            except KeyError:  # first file in this directory
                device = self._devices[directory] = self._device_of(directory)
            groups.setdefault(device, []).append((path, directory))
        one_by_one = [path for path, _dir in groups.pop(None, ())]
        for group in groups.values():
            if len(group) >= self.syncfs_min_files:
                self._syncfs(group[0][1])
            else:
                one_by_one.extend(path for path, _dir in group)
        if len(one_by_one) < 2 or self.threads < 2:
            for path in one_by_one:
                self._fsync(path)
            return
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="keep-fsync")
        for _ in self._pool.map(self._fsync, one_by_one):
            pass

    def sync_directories(self, directories: Sequence[str]) -> None:
        """Make the entries renamed into *directories* durable: one syncfs(2) per filesystem
        that `syncfs_device` trusts, else an fsync of each directory."""
        done: set[int] = set()
        for directory in directories:
            try:
                device = self._devices[directory]
            except KeyError:  # not seen by sync (no file of a batch was in it)
                device = self._devices[directory] = self._device_of(directory)
            if device is None:
                self._fsync(directory)
            elif device not in done:
                self._syncfs(directory)
                done.add(device)

    def close(self) -> None:
        """Stop the fsync threads (started only when needed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
