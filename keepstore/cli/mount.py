"""``keep mount``: the command that serves a dataset with FUSE through `keepstore.contrib.fuse`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time

from ..config import Timeout
from ..contrib.fuse import MOUNT_RETRIES, MOUNT_TIMEOUT, MountError, load_mfusepy, mount, open_mount_store
from ..datasets.targets import split_target
from ..datasets.tree import DEFAULT_MEMORY_BYTES, DEFAULT_READAHEAD, ReadPath

__all__ = ["cmd_mount", "register"]

log = logging.getLogger(__name__)


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
    loc, sub = split_target(args.locator)
    if sub:
        raise MountError("keep mount takes a dataset locator, not LOCATOR/path")
    mountpoint = _check_mountpoint(args.mountpoint)
    load_mfusepy()  # fail here, with a clear message, rather than in a background child
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
    p = sub.add_parser("mount", help="mount a dataset read-only with FUSE (unmount: fusermount3 -u DIR)",
                       description="Show a dataset as a read-only directory tree at MOUNTPOINT through FUSE; "
                                   "blocks are fetched as files are read, with read-ahead and a cache.")
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
