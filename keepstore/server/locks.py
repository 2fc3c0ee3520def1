"""Block locks of `keep serve`: 256 stripes by md5, shared between worker processes when asked."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["BlockLock", "BlockLocks"]


class BlockLock:
    """One stripe: a thread lock and, when shared, a POSIX record lock on one byte of the
    lock file, so threads of one process and worker processes of one server exclude each
    other (record locks are per process, hence the thread lock in front).

    Args:
        owner: The `BlockLocks` the stripe belongs to (it holds the lock file).
        offset: The stripe's byte in the lock file.
    """

    __slots__ = ("_thread", "offset", "owner")

    def __init__(self, owner: BlockLocks, offset: int) -> None:
        self.owner = owner
        self.offset = offset
        self._thread = threading.Lock()

    def __enter__(self) -> BlockLock:
        self._thread.acquire()
        fd = self.owner.fd()
        if fd is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX, 1, self.offset)
            except BaseException:  # interrupted, or the file system refuses: give the thread lock back
                self._thread.release()
                raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fd = self.owner.fd()
        try:
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, self.offset)
        finally:
            self._thread.release()


class BlockLocks:
    """The 256 block locks of one server, by the block's first two hex digits. With *path*,
    each is also a record lock on that file, shared by every process that opens it (worker
    processes of ``keep serve --workers``); the file is opened once per process and never
    closed, because closing any descriptor of a file drops the process's record locks on it.

    Args:
        path: The lock file shared with other processes, or None (this process only).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0
        self._open = threading.Lock()
        self._stripes = tuple(BlockLock(self, i) for i in range(256))

    def __call__(self, md5: str) -> BlockLock:
        return self._stripes[int(md5[:2], 16)]

    def fd(self) -> int | None:
        """The lock file's descriptor in this process (None: not shared)."""
        if self.path is None:
            return None
        if self._pid != os.getpid():  # first use, or first in a forked worker: open it here
            with self._open:
                if self._pid != os.getpid():
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                    self._pid = os.getpid()
        return self._fd
