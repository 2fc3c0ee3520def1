"""``keep mount``: a dataset as a read-only FUSE filesystem (a thin mfusepy adapter over `ReadPath`)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config import Settings, Timeout
from ..datasets.byid import ByIdTree
from ..datasets.tree import Attr, ReadPath
from ..errors import KeepError
from ..store import BlockStore

__all__ = ["ByIdOperations", "KeepOperations", "MountError", "load_mfusepy", "mount", "open_mount_store",
           "serve_operations"]

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
def as_fuse_errors(op: str, path: str) -> Iterator[None]:
    """Turn what `ReadPath` raises into ``OSError(errno)``, which mfusepy hands to the kernel."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise OSError(_errno_for(exc), os.strerror(_errno_for(exc))) from exc
    except (KeepError, OSError) as exc:  # a store failure: the reader gets EIO, the log says why
        log.warning("%s %s failed: %s", op, path, exc)
        raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc


def stat_for(attr: Attr) -> dict[str, Any]:
    """The ``st_*`` mapping mfusepy wants (times in nanoseconds, owned by the mounting user)."""
    st: dict[str, Any] = dict(attr.as_stat())
    for key in ("st_mtime", "st_ctime", "st_atime"):
        st[key] = int(st[key] * 1e9)
    st["st_uid"], st["st_gid"] = os.getuid(), os.getgid()
    return st


class _ReadOnlyOperations:
    """The FUSE callbacks (mfusepy's duck-typed ``Operations``) every read-only tree shares."""

    use_ns = True  # st_*time in integer nanoseconds (mfusepy's non-deprecated convention)

    def __init__(self, tree: ReadPath | ByIdTree, *, on_init: Callable[[], Any] | None = None) -> None:
        self.tree = tree
        self._on_init = on_init

    def init(self, path: str) -> None:
        if self._on_init is not None:
            self._on_init()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with as_fuse_errors("getattr", path):
            return stat_for(self.tree.lookup(path))

    def readdir(self, path: str, fh: int) -> list[str]:
        with as_fuse_errors("readdir", path):
            return [".", "..", *self.tree.readdir(path)]

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        with as_fuse_errors("open", path):
            if self.tree.lookup(path).is_dir:
                raise IsADirectoryError(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with as_fuse_errors("read", path):
            return self.tree.read(path, offset, size)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 1 << 16, "f_frsize": 1 << 16, "f_namemax": 255}


class KeepOperations(_ReadOnlyOperations):
    """The FUSE callbacks for one `ReadPath`, read-only; ``statfs`` shows the dataset's size."""

    def __init__(self, tree: ReadPath, *, on_init: Callable[[], Any] | None = None) -> None:
        super().__init__(tree, on_init=on_init)
        self.tree: ReadPath = tree

    def statfs(self, path: str) -> dict[str, int]:
        total = self.tree.manifest.total_size
        return {**super().statfs(path), "f_blocks": (total + 65535) >> 16, "f_bfree": 0, "f_bavail": 0,
                "f_files": len(self.tree.manifest.files), "f_ffree": 0}


class ByIdOperations(_ReadOnlyOperations):
    """Read-only FUSE callbacks for a `ByIdTree`: ``/<locator>/path`` opens datasets on lookup."""

    def __init__(self, tree: ByIdTree, *, on_init: Callable[[], Any] | None = None) -> None:
        super().__init__(tree, on_init=on_init)


def load_mfusepy() -> Any:
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
    # A dataset never changes, so the kernel may keep its pages across opens (kernel_cache).
    serve_operations(lambda started: KeepOperations(tree, on_init=started), mountpoint,
                     fsname=f"keep:{tree.locator.stripped()}", foreground=foreground, debug=debug,
                     ro=True, kernel_cache=True, on_init=on_init, **options)


def serve_operations(make: Callable[[Callable[[], None]], Any], mountpoint: str, *, fsname: str,
                     on_init: Callable[[], Any] | None = None, foreground: bool = True, debug: bool = False,
                     **options: Any) -> None:
    """Serve the operations ``make(started)`` returns at *mountpoint* until unmounted or SIGINT/SIGTERM.

    The operations must call ``started()`` from their FUSE ``init``; *on_init* runs then too.
    *options* are libfuse mount options as keywords (``ro=True``, ``max_write=...``).
    """
    mfusepy = load_mfusepy()
    mounted: list[bool] = []

    def started() -> None:
        mounted.append(True)
        if on_init is not None:
            on_init()

    try:
        mfusepy.FUSE(make(started), mountpoint, foreground=foreground, debug=debug, fsname=fsname[:120],
                     subtype="keep", default_permissions=True, **options)
    except RuntimeError as exc:  # mfusepy's report of fuse_main's non-zero status
        if mounted:  # libfuse reports an exit by SIGINT/SIGTERM as status 8, after unmounting
            log.info("unmounted %s (fuse_main status %s)", mountpoint, exc)
            return
        raise MountError(f"mounting {mountpoint} failed (status {exc}); is /dev/fuse usable?") from exc
