"""``keep mount --write`` and ``--commit``: serve a staging tree, commit it, and report the locator."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

from ..contrib.fuse import serve_operations
from ..contrib.fuse_write import WRITE_OPTIONS, StagingOperations, request_commit
from ..datasets.receipt import atomic_write
from ..datasets.staging import StagingError, StagingTree
from ..datasets.targets import split_target
from ..datasets.tree import ReadPath
from ..errors import KeepError
from ..store import BlockStore

__all__ = ["commit_mounted", "commit_staging", "default_staging_root", "serve_write"]

log = logging.getLogger(__name__)


def default_staging_root(environ: dict[str, str] | None = None) -> str:
    """``$XDG_CACHE_HOME/keepstore/staging`` (``~/.cache`` when unset), beside the block cache."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "keepstore", "staging")


def _report(args: argparse.Namespace, locator: str, *, to_stdout: bool = True) -> None:
    if args.locator_file:
        atomic_write(args.locator_file, lambda f: f.write(f"{locator}\n".encode()))
    if to_stdout:
        print(locator, flush=True)


def _failed(directory: str, exc: BaseException) -> StagingError:
    return StagingError(f"commit of staging {directory} failed: {exc}; the staging is kept: "
                        f"finish with keep mount --commit --staging {directory}")


@contextlib.contextmanager
def _opened(store: BlockStore, args: argparse.Namespace, directory: str, *, create: bool) -> Iterator[StagingTree]:
    """The staging tree in *directory*: reopened when it holds one, else new over ``--base``."""
    reserve = args.staging_reserve << 20
    if os.path.isfile(os.path.join(directory, "staging.json")):
        recorded = StagingTree.read_base(directory)
        if args.base and (recorded is None or split_target(args.base)[0].stripped() !=
                          split_target(recorded)[0].stripped()):
            raise StagingError(f"staging {directory} is over {recorded or 'no base'}, not --base {args.base}")
        base = ReadPath(store, recorded) if recorded else None
        try:
            tree = StagingTree.reopen(directory, base=base, reserve=reserve)
        except BaseException:
            if base is not None:
                base.close()
            raise
        print(f"keep: reopened staging {directory}", file=sys.stderr)
    elif not create:
        raise StagingError(f"{directory} is not a staging directory")
    else:
        base = None
        if args.base:
            loc, sub = split_target(args.base)
            if sub:
                raise StagingError("--base takes a dataset locator, not LOCATOR/path")
            base = ReadPath(store, loc)
        tree = StagingTree.new(directory, base=base, reserve=reserve)
        print(f"keep: staging in {directory}", file=sys.stderr)
    try:
        yield tree
    finally:
        tree.close()
        if base is not None:
            base.close()


def _commit(tree: StagingTree, store: BlockStore, args: argparse.Namespace) -> str:
    if tree.clean and tree.committed is not None:
        return tree.committed[1]
    try:
        receipt = tree.commit(store, copies=args.copies, storage_classes=args.storage_classes)
    except (KeepError, OSError) as exc:
        raise _failed(tree.directory, exc) from exc
    return receipt.locator


def serve_write(args: argparse.Namespace, store: BlockStore, mountpoint: str, on_init: Callable[[], None] | None,
                *, commit_on_unmount: bool, print_locator: bool) -> int:
    """Serve a staging tree at *mountpoint*; after the unmount commit it (unless told not to).

    A committed staging directory is removed; one that is not committed is kept, and said so.
    """
    directory = args.staging or os.path.join(default_staging_root(), f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    with _opened(store, args, directory, create=True) as tree:

        def commit_now() -> str:
            locator = _commit(tree, store, args)
            _report(args, locator, to_stdout=print_locator)
            return locator

        log.info("mounting staging %s at %s", directory, mountpoint)
        serve_operations(lambda started: StagingOperations(tree, on_commit=commit_now, on_init=started), mountpoint,
                         fsname=f"keep:staging:{os.path.basename(directory)}", on_init=on_init, debug=args.debug,
                         raw_fi=True, **WRITE_OPTIONS)
        if commit_on_unmount and not tree.clean:
            commit_now()
        if not tree.clean:
            print(f"keep: staging kept in {directory} (not committed)", file=sys.stderr)
            return 0
    tree.discard()  # committed as it stands: the dataset holds it all now
    return 0


def commit_staging(args: argparse.Namespace, store: BlockStore) -> int:
    """``keep mount --commit --staging DIR``: commit a staging tree no mount serves, then remove it."""
    with _opened(store, args, args.staging, create=False) as tree:
        locator = _commit(tree, store, args)
    _report(args, locator)
    tree.discard()
    return 0


def commit_mounted(args: argparse.Namespace, mountpoint: str) -> int:
    """``keep mount --commit MOUNTPOINT``: the running mount commits; print the locator."""
    _report(args, request_commit(mountpoint))
    return 0
