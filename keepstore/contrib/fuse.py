"""``keep mount``: a dataset as a read-only FUSE filesystem (a thin mfusepy adapter over `ReadPath`)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config import Settings, Timeout
from ..errors import KeepError
from ..datasets.tree import DEFAULT_MEMORY_BYTES, DEFAULT_READAHEAD, ReadPath
from ..store import BlockStore

__all__ = ["KeepOperations", "MountError", "mount", "open_mount_store", "register"]

log = logging.getLogger(__name__)

# A mount must answer EIO in seconds when services are gone, not after the client's default
# ten retry rounds: these bound a failing read to about 2 s of backoff plus the timeouts.
MOUNT_RETRIES = 2
MOUNT_TIMEOUT = Timeout(connect=2.0, read=30.0)


class MountError(KeepError):
    """The filesystem could not be mounted (FUSE missing, bad mount point, mount refused)."""


def _errno_for(exc: BaseException) -> int:
    """The errno a FUSE caller sees for an exception from `ReadPath`."""
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


@contextmanager
def _as_fuse_errors(op: str, path: str) -> Iterator[None]:
    """Turn what `ReadPath` raises into ``OSError(errno)``, which mfusepy hands to the kernel."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise OSError(_errno_for(exc), os.strerror(_errno_for(exc))) from exc
    except (KeepError, OSError) as exc:  # a store failure: the reader gets EIO, the log says why
        log.warning("%s %s failed: %s", op, path, exc)
        raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc


class KeepOperations:
    """The FUSE callbacks (mfusepy's duck-typed ``Operations``) for one `ReadPath`, read-only."""

    use_ns = True  # st_*time in integer nanoseconds (mfusepy's non-deprecated convention)

    def __init__(self, tree: ReadPath, *, on_init: Callable[[], Any] | None = None) -> None:
        self.tree = tree
        self._on_init = on_init

    def init(self, path: str) -> None:
        if self._on_init is not None:
            self._on_init()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with _as_fuse_errors("getattr", path):
            st = self.tree.lookup(path).as_stat()
        for key in ("st_mtime", "st_ctime", "st_atime"):
            st[key] = int(st[key] * 1e9)
        st["st_uid"], st["st_gid"] = os.getuid(), os.getgid()
        return st

    def readdir(self, path: str, fh: int) -> list[str]:
        with _as_fuse_errors("readdir", path):
            return [".", "..", *self.tree.readdir(path)]

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        with _as_fuse_errors("open", path):
            if self.tree.lookup(path).is_dir:
                raise IsADirectoryError(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with _as_fuse_errors("read", path):
            return self.tree.read(path, offset, size)

    def statfs(self, path: str) -> dict[str, int]:
        total = self.tree.manifest.total_size
        return {"f_bsize": 1 << 16, "f_frsize": 1 << 16, "f_blocks": (total + 65535) >> 16,
                "f_bfree": 0, "f_bavail": 0, "f_files": len(self.tree.manifest.files), "f_ffree": 0,
                "f_namemax": 255}


def _load_mfusepy() -> Any:
    # mfusepy prefers libfuse2 when both are installed; keepstore targets libfuse3 (Debian fuse3).
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except ImportError as exc:
        raise MountError("keep mount needs mfusepy: pip install 'keepstore[fuse]'") from exc
    except (OSError, AttributeError) as exc:  # mfusepy raises these when libfuse is missing or too old
        raise MountError(f"keep mount needs libfuse3 (Debian: apt-get install fuse3): {exc}") from exc
    return mfusepy


def open_mount_store(*, retries: int = MOUNT_RETRIES, timeout: Timeout = MOUNT_TIMEOUT,
                     disk_cache: bool = True, environ: dict[str, str] | None = None) -> BlockStore:
    """The store a mount reads from: `KeepClient.from_env()` with bounded retries and the disk cache.

    With nothing configured this is the `LocalStore` (which needs no cache).
    """
    from ..client import KeepClient

    settings = Settings.from_env(environ)
    extra: dict[str, Any] = {}
    if disk_cache and settings.mode != "local":
        from ..cache import DiskBlockCache

        extra["cache"] = DiskBlockCache(settings.default_cache_dir(environ), settings.cache_max_bytes)
    return KeepClient.from_env(environ, retries=retries, timeout=timeout, **extra)


def mount(tree: ReadPath, mountpoint: str, *, foreground: bool = True,
          on_init: Callable[[], Any] | None = None, debug: bool = False, **options: Any) -> None:
    """Serve *tree* at *mountpoint* until unmounted or SIGINT/SIGTERM (libfuse then unmounts)."""
    mfusepy = _load_mfusepy()
    mounted: list[bool] = []

    def started() -> None:
        mounted.append(True)
        if on_init is not None:
            on_init()

    name = f"keep:{tree.locator.stripped()}"
    try:
        mfusepy.FUSE(KeepOperations(tree, on_init=started), mountpoint, foreground=foreground, debug=debug,
                     ro=True, fsname=name[:120], subtype="keep", default_permissions=True,
                     # A dataset never changes, so the kernel may keep its pages across opens.
                     kernel_cache=True, **options)
    except RuntimeError as exc:  # mfusepy's report of fuse_main's non-zero status
        if mounted:  # libfuse reports an exit by SIGINT/SIGTERM as status 8, after unmounting
            log.info("unmounted %s (fuse_main status %s)", mountpoint, exc)
            return
        raise MountError(f"mounting {mountpoint} failed (status {exc}); is /dev/fuse usable?") from exc


def _check_mountpoint(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    return os.path.abspath(path)


def _detach_stdio() -> None:
    """A background mount, once up, writes nothing to the terminal it was started from."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _wait_for_child(pid: int, mountpoint: str, limit: float = 60.0) -> int:
    """In the parent of a background mount: 0 once *mountpoint* is mounted, 1 if the child died."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) or 1
        if os.path.ismount(mountpoint):
            return 0
        time.sleep(0.05)
    print(f"keep: error: {mountpoint} did not appear within {limit:.0f} s", file=sys.stderr)
    return 1


def cmd_mount(args: argparse.Namespace) -> int:
    from ..cli_datasets import split_target

    loc, sub = split_target(args.locator)
    if sub:
        raise MountError("keep mount takes a dataset locator, not LOCATOR/path")
    mountpoint = _check_mountpoint(args.mountpoint)
    _load_mfusepy()  # fail here, with a clear message, rather than in a background child
    if not args.foreground:
        # Fork before any thread or connection exists; the child serves in the foreground.
        pid = os.fork()
        if pid:
            return _wait_for_child(pid, mountpoint)
        os.setsid()
    store = open_mount_store(retries=args.retries, timeout=Timeout(connect=args.connect_timeout,
                                                                    read=args.read_timeout),
                             disk_cache=not args.no_disk_cache)
    with store, ReadPath(store, loc, readahead=args.readahead, memory_bytes=args.memory_cache << 20) as tree:
        log.info("mounting %s at %s", tree, mountpoint)
        mount(tree, mountpoint, foreground=True, debug=args.debug,
              on_init=None if args.foreground else _detach_stdio)
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep mount`` to the command line."""
    p = sub.add_parser("mount", help="mount a dataset read-only with FUSE (unmount: fusermount3 -u DIR)")
    p.add_argument("locator", metavar="LOCATOR", help="the dataset's locator (from keep put)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground until unmounted or interrupted (Ctrl-C unmounts)")
    p.add_argument("--readahead", type=_non_negative, default=DEFAULT_READAHEAD, metavar="BLOCKS",
                   help=f"blocks fetched ahead of sequential readers (default {DEFAULT_READAHEAD})")
    p.add_argument("--memory-cache", type=_non_negative, default=DEFAULT_MEMORY_BYTES >> 20, metavar="MIB",
                   help=f"in-memory block cache (default {DEFAULT_MEMORY_BYTES >> 20} MiB)")
    p.add_argument("--no-disk-cache", action="store_true", help="do not use the shared disk block cache")
    p.add_argument("--retries", type=_non_negative, default=MOUNT_RETRIES,
                   help=f"retry rounds before a read fails with EIO (default {MOUNT_RETRIES})")
    p.add_argument("--connect-timeout", type=float, default=MOUNT_TIMEOUT.connect, metavar="SECONDS",
                   help=f"connection timeout (default {MOUNT_TIMEOUT.connect:g})")
    p.add_argument("--read-timeout", type=float, default=MOUNT_TIMEOUT.read, metavar="SECONDS",
                   help=f"a transfer stalled this long fails (default {MOUNT_TIMEOUT.read:g})")
    p.set_defaults(func=cmd_mount)
