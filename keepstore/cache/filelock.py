"""A per-block ``flock`` lock file with a timeout, shared by processes using one cache directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["block_lock"]

log = logging.getLogger(__name__)

# Lock files this thread holds. flock belongs to an open file, so a thread that already holds
# a block's lock (a cache nested in another on the same directory) would otherwise wait on itself.
_held = threading.local()


@contextlib.contextmanager
def block_lock(
    path: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on *path* for the ``with`` body; yield whether it was acquired.

    Gives up after *timeout* seconds and yields False, so a stuck holder only costs a duplicate
    download (a dead holder's lock is released by the kernel anyway). The file is removed on
    release; a waiter that wakes holding a removed file's lock notices (the inode changed) and
    tries again, so lock files do not pile up. OSError other than contention propagates.
    """
    held: set[str] = _held.__dict__.setdefault("paths", set())
    key = os.path.realpath(path)
    if key in held:
        yield True  # this thread holds it already, further up its own stack
        return
    deadline = clock() + timeout
    delay = 0.002
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            if clock() >= deadline:
                yield False
                return
            sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        try:
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None  # released and removed by the holder we waited for
            same = current == os.fstat(fd).st_ino
        except OSError:
            os.close(fd)
            raise
        if not same:
            os.close(fd)
            continue
        break
    held.add(key)
    try:
        yield True
    finally:
        held.discard(key)
        # Unlink before unlocking so a waiter never locks a name that is about to vanish unseen.
        try:
            os.unlink(path)
        except FileNotFoundError:  # removed by a cache clean-up
            pass
        except OSError as exc:  # the fetch it guarded succeeded: a stray lock file is harmless
            log.debug("could not remove lock file %s: %s", path, exc)
        finally:
            os.close(fd)
