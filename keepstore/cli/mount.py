"""``keep mount``: the command that serves a dataset with FUSE through `keepstore.contrib.fuse`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable

from ..config import Timeout
from ..contrib.fuse import (
    MOUNT_RETRIES,
    MOUNT_TIMEOUT,
    ByIdOperations,
    MountError,
    load_mfusepy,
    mount,
    open_mount_store,
    serve_operations,
)
from ..datasets.byid import ByIdTree
from ..datasets.staging import DEFAULT_RESERVE
from ..datasets.targets import split_target
from ..datasets.tree import DEFAULT_MEMORY_BYTES, DEFAULT_READAHEAD, ReadPath
from ..store import BlockStore
from .mount_exec import die_with_parent, run_command, stop_server, wait_until_mounted
from .mount_write import commit_mounted, commit_staging, serve_write
from .types import non_negative_int, positive_int, storage_classes

__all__ = ["cmd_mount", "register"]

log = logging.getLogger(__name__)


def _check_mountpoint(path: str) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(f"{path} is a mount whose process has died; fusermount3 -u {path} clears it") from exc
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    with os.scandir(path) as entries:
        first = next(entries, None)
    if first is not None:  # libfuse3 would mount over it, hiding what is there
        raise MountError(f"{path} is not empty (it holds {first.name!r}); mount on an empty directory")
    return os.path.abspath(path)


def _detach_stdio() -> None:
    """A background mount, once up, writes nothing to the terminal it was started from."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _mode(args: argparse.Namespace) -> str:
    """Which kind of mount the arguments ask for, after checking the positionals fit it."""
    n = len(args.targets)
    if args.by_id and args.write:
        args.mount_parser.error("--by-id and --write are different mounts: choose one")
    if args.write:
        if n != 1:
            args.mount_parser.error("--write takes only MOUNTPOINT (the base dataset is --base LOCATOR)")
        return "write"
    if args.base:
        args.mount_parser.error("--base goes with --write")
    if args.by_id:
        if n != 1:
            args.mount_parser.error("--by-id takes only MOUNTPOINT")
        return "by-id"
    if n != 2:
        args.mount_parser.error("expected LOCATOR MOUNTPOINT (or --by-id MOUNTPOINT)")
    return "dataset"


def _store(args: argparse.Namespace) -> BlockStore:
    return open_mount_store(retries=args.retries, timeout=Timeout(connect=args.connect_timeout, read=args.read_timeout),
                            disk_cache=not args.no_disk_cache)


def _show_warnings(args: argparse.Namespace) -> None:
    """The mount's warnings (a read's EIO and why, a full staging disk) go to stderr as ``keep: ...``."""
    if args.debug:
        return  # main() has configured logging already, with more detail
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("keep: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("keepstore.contrib").addHandler(handler)


def _serve(args: argparse.Namespace, mode: str, mountpoint: str, on_init: Callable[[], None] | None) -> int:
    """Open the store and serve the mount until it is unmounted (in this process)."""
    _show_warnings(args)
    memory = args.memory_cache << 20
    with _store(args) as store:
        if mode == "write":
            in_exec = args.exec_argv is not None  # then the parent commits (after CMD succeeds) and prints
            return serve_write(args, store, mountpoint, on_init, commit_on_unmount=not in_exec,
                               print_locator=not in_exec)
        if mode == "by-id":
            with ByIdTree(store, memory_bytes=memory, readahead=args.readahead) as byid:
                log.info("mounting datasets by locator at %s", mountpoint)
                serve_operations(lambda started: ByIdOperations(byid, on_init=started), mountpoint,
                                 fsname="keep:by-id", ro=True, kernel_cache=True, on_init=on_init,
                                 debug=args.debug)
            return 0
        loc, sub = split_target(args.targets[0])
        if sub:
            raise MountError("keep mount takes a dataset locator, not LOCATOR/path")
        with ReadPath(store, loc, readahead=args.readahead, memory_bytes=memory) as tree:
            log.info("mounting %s at %s", tree, mountpoint)
            mount(tree, mountpoint, foreground=True, debug=args.debug, on_init=on_init)
    return 0


def _exec(args: argparse.Namespace, mode: str, mountpoint: str) -> int:
    """Mount in a child process, run the command here, then unmount; the command's status."""
    pid = os.fork()
    if not pid:  # the child serves, and returns through main() as a background mount does
        os.setsid()  # a Ctrl-C at the terminal is for the command; the parent unmounts after it
        die_with_parent()
        return _serve(args, mode, mountpoint, on_init=None)
    status = wait_until_mounted(pid, mountpoint)
    if status:
        return status
    try:
        code = run_command(args.exec_argv, env=dict(os.environ, KEEP_MOUNT=mountpoint))
        if mode == "write":
            if code == 0:
                code = commit_mounted(args, mountpoint)
            else:
                print(f"keep: {args.exec_argv[0]} exited with status {code}: not committed", file=sys.stderr)
    finally:
        server = stop_server(pid, mountpoint)
    if server not in (0, 8):  # 8: libfuse's status for an exit by signal
        log.warning("mount process exited with status %s", server)
    return code


def _commit(args: argparse.Namespace) -> int:
    if args.targets and args.staging:
        args.mount_parser.error("--commit takes MOUNTPOINT (a running --write mount) or --staging DIR, not both")
    if args.staging:
        with _store(args) as store:
            return commit_staging(args, store)
    if len(args.targets) != 1:
        args.mount_parser.error("--commit takes MOUNTPOINT (a running --write mount) or --staging DIR")
    return commit_mounted(args, args.targets[0])


def cmd_mount(args: argparse.Namespace) -> int:
    if args.exec_argv is not None and not args.exec_argv:
        args.mount_parser.error("--exec needs a command")
    if args.commit:
        return _commit(args)
    mode = _mode(args)
    mountpoint = _check_mountpoint(args.targets[-1])
    if mode == "dataset":
        _, sub = split_target(args.targets[0])  # a bad locator fails here, before anything forks
        if sub:
            raise MountError("keep mount takes a dataset locator, not LOCATOR/path")
    load_mfusepy()  # fail here, with a clear message, rather than in a background child
    if args.exec_argv is not None:
        return _exec(args, mode, mountpoint)
    if not args.foreground:
        # Fork before any thread or connection exists; the child serves in the foreground.
        pid = os.fork()
        if pid:
            return wait_until_mounted(pid, mountpoint)
        os.setsid()
    return _serve(args, mode, mountpoint, on_init=None if args.foreground else _detach_stdio)








def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep mount`` to the command line."""
    p = sub.add_parser("mount", help="mount datasets with FUSE (unmount: fusermount3 -u DIR)",
                       description="Mount a dataset read-only (LOCATOR MOUNTPOINT), every dataset by its "
                                   "locator (--by-id MOUNTPOINT), or a writable staging tree that becomes a new "
                                   "dataset (--write [--base LOCATOR] MOUNTPOINT); and run a command while "
                                   "mounted (--exec).",
                       usage="%(prog)s [options] [LOCATOR] MOUNTPOINT [--exec CMD [ARG ...]]")
    p.add_argument("targets", nargs="*", metavar="[LOCATOR] MOUNTPOINT",
                   help="the dataset's locator (from keep put) and an existing, empty directory")
    p.add_argument("--by-id", action="store_true",
                   help="serve every dataset as MOUNTPOINT/<locator>/... on lookup (listing shows those opened)")
    w = p.add_argument_group("writable mounts (--write)")
    w.add_argument("--write", action="store_true",
                   help="a writable mount for a stage's outputs, stored as a new dataset on unmount or --commit")
    w.add_argument("--base", metavar="LOCATOR", help="start from this dataset (its files read, changed copy-on-write)")
    w.add_argument("--staging", metavar="DIR",
                   help="where changes are kept until committed (default $XDG_CACHE_HOME/keepstore/staging/<id>); "
                        "an existing staging directory is reopened as it was left")
    w.add_argument("--staging-reserve", type=non_negative_int, default=DEFAULT_RESERVE >> 20, metavar="MIB",
                   help=f"writes fail with ENOSPC rather than leave less free (default {DEFAULT_RESERVE >> 20} MiB)")
    w.add_argument("--commit", action="store_true",
                   help="commit now: keep mount --commit MOUNTPOINT (a running --write mount), or "
                        "--commit --staging DIR (a staging directory left behind)")
    w.add_argument("--locator-file", metavar="FILE", help="also write the committed dataset's locator to FILE")
    w.add_argument("--copies", type=positive_int, default=None, help="replicas wanted (default: the configured copies)")
    w.add_argument("--storage-classes", type=storage_classes, default=None, metavar="A,B",
                   help="storage classes wanted, comma-separated")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground until unmounted or interrupted (Ctrl-C unmounts)")
    p.add_argument("--readahead", type=non_negative_int, default=DEFAULT_READAHEAD, metavar="BLOCKS",
                   help=f"blocks fetched ahead of sequential readers (default {DEFAULT_READAHEAD})")
    p.add_argument("--memory-cache", type=non_negative_int, default=DEFAULT_MEMORY_BYTES >> 20, metavar="MIB",
                   help=f"in-memory block cache (default {DEFAULT_MEMORY_BYTES >> 20} MiB)")
    p.add_argument("--no-disk-cache", action="store_true", help="do not use the shared disk block cache")
    p.add_argument("--retries", type=non_negative_int, default=MOUNT_RETRIES,
                   help=f"retry rounds before a read fails with EIO (default {MOUNT_RETRIES})")
    p.add_argument("--connect-timeout", type=float, default=MOUNT_TIMEOUT.connect, metavar="SECONDS",
                   help=f"connection timeout (default {MOUNT_TIMEOUT.connect:g})")
    p.add_argument("--read-timeout", type=float, default=MOUNT_TIMEOUT.read, metavar="SECONDS",
                   help=f"a transfer stalled this long fails (default {MOUNT_TIMEOUT.read:g})")
    p.add_argument("--exec", dest="exec_argv", nargs=argparse.REMAINDER, default=None, metavar="CMD",
                   help="mount, run CMD [ARG ...] (everything after --exec), unmount, and exit with its status")
    p.set_defaults(func=cmd_mount, mount_parser=p)
