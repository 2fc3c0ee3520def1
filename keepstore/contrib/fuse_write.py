"""``keep mount --write``: a `StagingTree` served read-write through FUSE (a thin mfusepy adapter)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..datasets.staging import StagingError, StagingFullError, StagingTree
from ..errors import KeepError

__all__ = ["CONTROL_NAME", "MAX_WRITE", "WRITE_OPTIONS", "StagingOperations", "request_commit"]

log = logging.getLogger(__name__)

CONTROL_NAME = ".keep#commit"  # write to it to commit; read it for the last commit's locator (or error)
_CONTROL_FH = 0  # StagingTree handles start at 1
# With hard_remove an unlinked file that is still open stays usable through its handle.
WRITE_OPTIONS: dict[str, Any] = {"hard_remove": True}
# 1 MiB writes (the kernel's largest) instead of 128 KiB: an eighth of the Python callbacks.
MAX_WRITE = 1 << 20


@contextmanager
def _as_errno(op: str, path: str | None) -> Iterator[None]:
    """Pass on errno-carrying OSErrors (ENOENT, EEXIST, ENOSPC, ...); any other failure is EIO."""
    try:
        yield
    except StagingFullError as exc:
        log.warning("%s", exc)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc
    except (KeepError, StagingError) as exc:  # the store (reading a base file) or the staging disk
        log.warning("%s %s failed: %s", op, path, exc)
        raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc
    except OSError as exc:
        if not exc.errno:
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc
        raise


class StagingOperations:
    """mfusepy callbacks (``raw_fi``: file info structs, so the control file can be ``direct_io``)."""

    use_ns = True  # (not nullpath_ok: libfuse passes paths, and None only for an unlinked open file)

    def __init__(self, tree: StagingTree, *, on_commit: Callable[[], str],
                 on_init: Callable[[], Any] | None = None) -> None:
        self.tree = tree
        self._on_commit = on_commit
        self._on_init = on_init
        self._status = b""
        self._status_lock = threading.Lock()
        self._started_ns = time.time_ns()
        self._dirs: dict[int, str] = {}  # open directory handles: the path each was opened at
        self._next_dir = 1

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.max_write = MAX_WRITE
        if self._on_init is not None:
            self._on_init()

    @staticmethod
    def _is_control(path: str | None) -> bool:
        return path is not None and path.strip("/") == CONTROL_NAME

    def _control_stat(self) -> dict[str, Any]:
        t = self._started_ns
        return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": len(self._status), "st_mtime": t,
                "st_ctime": t, "st_atime": t, "st_uid": os.getuid(), "st_gid": os.getgid()}

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        if (fh is not None and fh.fh == _CONTROL_FH) or (fh is None and self._is_control(path)):
            return self._control_stat()
        with _as_errno("getattr", path):
            if fh is not None:
                return self.tree.fstat(fh.fh).as_stat()
            return self.tree.lookup(path or "").as_stat()

    def opendir(self, path: str) -> int:
        with _as_errno("opendir", path):
            if not self.tree.lookup(path).is_dir:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with self._status_lock:
            fh, self._next_dir = self._next_dir, self._next_dir + 1
            self._dirs[fh] = path
        return fh

    def readdir(self, path: str | None, fh: int) -> list[str]:
        path = self._dirs.get(fh, path or "")
        with _as_errno("readdir", path):
            return [".", "..", *self.tree.readdir(path)]

    def releasedir(self, path: str | None, fh: int) -> None:
        with self._status_lock:
            self._dirs.pop(fh, None)

    def _refuse_control(self, *paths: str) -> None:
        if any(self._is_control(p) for p in paths):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def mkdir(self, path: str, mode: int) -> None:
        self._refuse_control(path)
        with _as_errno("mkdir", path):
            self.tree.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        with _as_errno("rmdir", path):
            self.tree.rmdir(path)

    def unlink(self, path: str) -> None:
        self._refuse_control(path)
        with _as_errno("unlink", path):
            self.tree.unlink(path)

    def rename(self, old: str, new: str) -> None:
        self._refuse_control(old, new)
        with _as_errno("rename", old):
            self.tree.rename(old, new)

    def create(self, path: str, mode: int, fi: Any) -> int:
        self._refuse_control(path)
        with _as_errno("create", path):
            fi.fh = self.tree.create(path, mode, fi.flags | os.O_CREAT)
        return 0

    def open(self, path: str, fi: Any) -> int:
        if self._is_control(path):
            fi.fh, fi.direct_io = _CONTROL_FH, 1  # its size changes with each commit: never page-cached
            return 0
        with _as_errno("open", path):
            fi.fh = self.tree.open(path, fi.flags & ~os.O_CREAT)
        return 0

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        if fi.fh == _CONTROL_FH:
            return self._status[offset:offset + size]
        with _as_errno("read", path):
            return self.tree.read(fi.fh, offset, size)

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        if fi.fh == _CONTROL_FH:
            return self._commit(len(data))
        with _as_errno("write", path):
            return self.tree.write(fi.fh, offset, data)

    def _commit(self, n: int) -> int:
        with self._status_lock:
            try:
                self._status = f"{self._on_commit()}\n".encode()
            except (KeepError, OSError) as exc:  # the store is unreachable, refuses, ...: staging stays
                self._status = f"error: {exc}\n".encode()
                log.error("commit failed: %s", exc)
                raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc
        return n

    def truncate(self, path: str | None, length: int, fh: Any = None) -> None:
        if self._is_control(path):
            return  # opening the control file with O_TRUNC (``echo commit > ...``)
        if path is None:  # ftruncate of an unlinked file: mfusepy passes libfuse 3 no handle here
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        with _as_errno("truncate", path):
            self.tree.truncate(path, length)

    def flush(self, path: str | None, fi: Any) -> None:
        return None

    def fsync(self, path: str | None, datasync: int, fi: Any) -> None:
        if fi.fh != _CONTROL_FH:
            with _as_errno("fsync", path):
                self.tree.fsync(fi.fh, bool(datasync))

    def release(self, path: str | None, fi: Any) -> None:
        if fi.fh != _CONTROL_FH:
            self.tree.release(fi.fh)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if self._is_control(path):
            return
        with _as_errno("utimens", path):
            self.tree.utime(path, None if times is None else times[1])

    def chmod(self, path: str, mode: int) -> None:
        if not self._is_control(path):
            with _as_errno("chmod", path):
                self.tree.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        return None  # a dataset has no owners; accepted so that tar and cp -p do not fail

    def statfs(self, path: str) -> dict[str, int]:
        return self.tree.statfs()


def request_commit(mountpoint: str) -> str:
    """Ask the ``keep mount --write`` serving *mountpoint* to commit; return the new locator."""
    control = os.path.join(mountpoint, CONTROL_NAME)
    try:
        fd = os.open(control, os.O_RDWR)
    except FileNotFoundError:
        raise StagingError(f"{mountpoint} is not a keep mount --write mount (it has no {CONTROL_NAME})") from None
    try:
        try:
            os.write(fd, b"commit\n")
        except OSError as exc:
            reason = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip().removeprefix("error: ")
            raise StagingError(reason or f"commit of {mountpoint} failed: {exc.strerror}") from exc
        return os.pread(fd, 1 << 16, 0).decode().strip()
    finally:
        os.close(fd)
