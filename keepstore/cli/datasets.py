"""The dataset commands of ``keep``: put, get, ls and cat, with progress on stderr (see cli/progress.py)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from ..cache import BlockCache, MemoryBlockCache
from ..datasets import DEFAULT_CACHE_BYTES, DatasetReader, atomic_write
from ..datasets.existing import ExistingPolicy, block_file, keep_existing, plan_extract
from ..datasets.extract import extract
from ..datasets.inventory import Entry as Listed
from ..datasets.inventory import Inventory
from ..datasets.manifest import ManifestError
from ..datasets.resume import journal_for, put_inventory
from ..datasets.targets import split_target
from ..errors import KeepError
from ..locator import MAX_BLOCK_SIZE, Locator
from ..open import open_store
from . import results
from .options import add_dry_run, add_filters, add_json, add_progress, completes_paths
from .progress import json_notices, notify, open_progress, showing_retries
from .selection import Filter, Plan, plan_put

__all__ = ["register"]

_CHUNK = 8 << 20


def _read_block(name: str) -> bytes:
    """One file (or stdin) that must fit one block."""
    if name == "-":
        data = sys.stdin.buffer.read(MAX_BLOCK_SIZE + 1)
    else:
        size = os.stat(name).st_size
        if size > MAX_BLOCK_SIZE:
            raise KeepError(f"{name}: {size} bytes is more than one block (64 MiB); store it without --blocks")
        with open(name, "rb") as f:
            data = f.read(MAX_BLOCK_SIZE + 1)
    if len(data) > MAX_BLOCK_SIZE:
        raise KeepError(f"{name}: more than one block (64 MiB); store it without --blocks")
    return data


def _put_blocks(args: argparse.Namespace) -> int:

    if args.rules or args.follow_links:
        raise KeepError("--exclude, --include and --follow-links choose files inside directories; "
                        "--blocks stores only the files named")
    for p in args.paths:
        if p != "-" and os.path.isdir(p):
            raise IsADirectoryError(21, "Is a directory (store directories without --blocks)", p)
    if args.dry_run:
        return results.print_block_plan(args.paths, [Locator.for_data(_read_block(n)) for n in args.paths],
                                        as_json=args.json)
    with open_store(args) as store:
        for name in args.paths:
            print(store.put(_read_block(name), copies=args.copies, storage_classes=args.storage_classes),
                  flush=True)
    return 0


def cmd_put(args: argparse.Namespace) -> int:

    json_notices(args)
    if args.blocks:
        return _put_blocks(args)
    paths: list[str] = args.paths
    if not paths and args.update is None:
        args.usage_error("give at least one PATH to store (or --update LOCATOR)")  # exits 2
    if args.remove and args.update is None:
        args.usage_error("--remove drops files from the dataset given by --update LOCATOR")
    for p in paths:
        if p != "-" and not os.path.exists(p):
            raise FileNotFoundError(2, "No such file or directory", p)
    if paths.count("-") > 1:
        raise KeepError("stdin (-) can be given only once")
    try:
        rules = Filter.of(args.rules)
    except ValueError as exc:
        raise KeepError(str(exc)) from None
    plan = plan_put(paths, name=args.name, rules=rules, follow_links=args.follow_links)
    left_out = plan.left_out_notice()
    if left_out:
        notify(args.progress, left_out)
    if args.dry_run:
        return results.print_put_plan(plan, sys.stdin.buffer, as_json=args.json, update=args.update,
                                      remove=args.remove)
    listed = _inventory(plan)
    store = open_store(args)
    with (
        store,
        open_progress(args.progress, "put", total_bytes=plan.bytes, total_files=plan.files) as progress,
        showing_retries(progress, getattr(args, "on_retry", None)),
    ):
        # The choices that change what is stored are part of the resume state's key.
        selection = {"rules": [list(r) for r in args.rules or ()], "follow_links": args.follow_links}
        journal, key = (None, "") if args.no_resume else journal_for(
            store, paths, name=args.name, copies=args.copies, storage_classes=args.storage_classes,
            update=args.update, remove=args.remove, selection=selection)
        receipt = put_inventory(store, listed, stdin=sys.stdin.buffer, copies=args.copies,
                                storage_classes=args.storage_classes, progress=progress.stored,
                                read_progress=progress.advance, on_file=progress.file_done, journal=journal,
                                key=key, update=args.update, remove=args.remove)
        progress.counted_as_skipped(receipt.bytes_skipped)
        progress.finish()
    if args.json:
        print(receipt.to_json(indent=2))
    else:
        print(receipt.locator, flush=True)
    return 0


def _inventory(plan: Plan) -> Inventory:
    """The files and directories a plan chose, with the stat that resuming compares."""
    files: list[Listed] = []
    dirs: list[str] = []
    for entry in plan.entries:
        if entry.kind == "directory":
            dirs.append(entry.path)
        elif entry.source == "-":
            files.append(Listed.stdin(entry.path))
        else:
            assert entry.source is not None
            files.append(Listed.of(entry.source, entry.path))
    return Inventory(tuple(files), tuple(dirs))


def _open_reader(store: Any, loc: Locator, cache: BlockCache | None = None) -> DatasetReader | None:
    """The dataset at *loc* (reading through *cache* when given), or None when the block is not
    manifest text (a plain block)."""
    try:
        return DatasetReader(store, loc, cache=cache)
    except ManifestError:
        return None


def _stream_file(reader: DatasetReader, path: str, out: BinaryIO, advance: Callable[[int], Any]) -> None:
    with reader.open(path) as f:
        while chunk := f.read(_CHUNK):
            out.write(chunk)
            advance(len(chunk))
    out.flush()


def cmd_get(args: argparse.Namespace) -> int:

    json_notices(args)
    loc, path = split_target(args.target)
    dest = args.dest
    policy = ExistingPolicy.from_flags(force=args.force, skip_existing=args.skip_existing,
                                       verify_existing=args.verify_existing)
    to_stdout = dest in (None, "-")
    if args.json and to_stdout and not args.dry_run:
        raise KeepError("--json prints its report on stdout: give a destination file or directory")
    report = functools.partial(results.print_get, args.target, "-" if to_stdout else dest,
                               dry_run=args.dry_run, as_json=args.json)
    store = open_store(args)
    with store:
        if args.raw and path:
            raise KeepError("--raw fetches a whole block; drop the /path")
        reader = None if args.raw else _open_reader(store, loc)
        if reader is None:
            if path:
                raise KeepError(f"{loc} is a plain block, not a dataset; it has no {path!r}")
            target = "-" if to_stdout else os.path.join(dest, loc.md5) if os.path.isdir(dest) else dest
            planned = [results.Planned("", target, loc.size)]
            if args.dry_run:
                return report(planned)
            if to_stdout:
                sys.stdout.buffer.write(store.get(loc))
                sys.stdout.buffer.flush()
            elif not keep_existing(target, block_file(loc), policy):
                data = store.get(loc)
                atomic_write(target, lambda f: f.write(data))
            return report(planned)
        if path and not reader.manifest.is_dir(path):
            size = reader.stat(path).size
            target = "-" if to_stdout else os.path.join(dest, path.rsplit("/", 1)[-1]) if os.path.isdir(dest) else dest
            planned = [results.Planned(path, target, size)]
            if args.dry_run:
                return report(planned)
            with (open_progress(args.progress, "get", total_bytes=size, total_files=1) as progress,
                  showing_retries(progress, getattr(args, "on_retry", None))):
                if to_stdout:
                    _stream_file(reader, path, sys.stdout.buffer, progress.advance)
                elif not keep_existing(target, reader.stat(path), policy, reader.blocks):
                    atomic_write(target, lambda f: _stream_file(reader, path, f, progress.advance))
                else:
                    progress.skipped(size)
                progress.finish(files=1)
            return report(planned)
        if to_stdout and not args.dry_run:
            raise KeepError(f"{args.target} is a dataset directory; give a destination directory "
                            f"(or LOCATOR/path for one file)")
        if not to_stdout and os.path.exists(dest) and not os.path.isdir(dest):
            raise NotADirectoryError(20, "Not a directory", dest)
        sub = reader.subtree(path)
        root = "-" if to_stdout else dest
        planned = [results.Planned(f.path, os.path.join(root, f.path), f.size) for f in sub.manifest.walk_files()]
        dirs = len(sub.manifest.directories)
        if args.dry_run:
            return report(planned, directories=dirs)
        # Every conflict found before writing (a directory not there yet has none).
        keep = plan_extract(sub.manifest, dest, policy, sub.blocks) if os.path.lexists(dest) else frozenset()
        with (open_progress(args.progress, "get", total_bytes=sub.manifest.total_size,
                            total_files=len(planned)) as progress,
              showing_retries(progress, getattr(args, "on_retry", None))):
            progress.skipped(sum(planned_file.size or 0 for planned_file in planned if planned_file.path in keep))
            extract(sub.manifest, sub.blocks, dest, progress=progress.advance, skip=keep)
            progress.finish(files=len(planned))
    return report(planned, directories=dirs)


def cmd_ls(args: argparse.Namespace) -> int:

    loc, path = split_target(args.target)
    with open_store(args) as store:
        reader = _open_reader(store, loc)
        if reader is None:
            raise KeepError(f"{loc} is a plain block, not a dataset")
        results.print_ls(args.target, results.ls_entries(reader.manifest, path), long=args.long, as_json=args.json)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    # One cache for every target: files of one block (or one dataset) fetch it once.
    with open_store(args) as store, MemoryBlockCache(DEFAULT_CACHE_BYTES) as cache:
        for target in args.targets:
            loc, path = split_target(target)
            reader = _open_reader(store, loc, cache)
            if reader is None:
                if path:
                    raise KeepError(f"{loc} is a plain block, not a dataset; it has no {path!r}")
                sys.stdout.buffer.write(cache.get_or_fetch(loc, functools.partial(store.get, loc), verified=True))
                continue
            if not path:
                raise KeepError(f"{target} is a dataset; name a file inside it (LOCATOR/path)")
            _stream_file(reader, path, sys.stdout.buffer, lambda n: None)
    sys.stdout.buffer.flush()
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", common: Callable[[Any], None]) -> None:
    """Add put, get, ls and cat to the ``keep`` parser."""
    put = sub.add_parser(
        "put", help="store files, directories or stdin as a dataset; print its locator",
        description="Store files, directories (recursively) or stdin as one dataset: the data goes into "
                    "packed blocks of at most 64 MiB, then a manifest block that names every file. The "
                    "manifest's locator, printed on stdout, is what keep get, ls, cat and mount take. "
                    "Symbolic links inside directories are left out unless --follow-links is given.")
    completes_paths(put.add_argument("paths", nargs="*", metavar="PATH", help="files or directories; - reads stdin"))
    add_json(put, "the receipt (locator, files, bytes, blocks and their replicas) instead of the locator")
    put.add_argument("--name", help="name for the file read from stdin (default 'stdin'), or for a single file")
    put.add_argument("--blocks", action="store_true",
                     help="store each file (at most 64 MiB) as one plain block and print one locator per file")
    put.add_argument("--no-resume", action="store_true",
                     help="neither use nor keep the resume state ($XDG_CACHE_HOME/keepstore/resume)")
    put.add_argument("--update", metavar="LOCATOR",
                     help="store a new dataset: this one plus PATHs (new or replacing files), by reference")
    put.add_argument("--remove", action="append", default=[], metavar="PATH",
                     help="with --update: drop this file or directory (repeatable)")
    add_dry_run(put, "what would be stored (files, bytes, blocks)")
    add_filters(put)
    common(put)
    put.set_defaults(func=cmd_put, usage_error=put.error)

    get = sub.add_parser(
        "get", help="fetch a dataset (tree), a file in one, or a plain block",
        description="Write a dataset, a directory or file inside it (LOCATOR/path), or a plain block to "
                    "DEST (a file or directory; a single file or block may go to stdout). Every file is "
                    "written to a temporary name and renamed when complete, verified and synced, so no "
                    "half-written file is left behind; when keep get returns, the files are on disk.")
    get.add_argument("target", metavar="LOCATOR[/path]")
    completes_paths(get.add_argument("dest", nargs="?", default=None,
                                     help="file or directory to write (default stdout: -)"))
    get.add_argument("--raw", action="store_true", help="fetch the block itself even if it is a manifest")
    add_json(get, "what was written (files, bytes, each file's destination)")
    add_dry_run(get, "what would be written where")
    add_progress(get)
    existing = get.add_mutually_exclusive_group()
    existing.add_argument("-f", "--force", action="store_true", help="overwrite files that exist already")
    existing.add_argument("--skip-existing", action="store_true",
                          help="keep existing files of the right size (re-run an interrupted get)")
    existing.add_argument("--verify-existing", action="store_true",
                          help="keep existing files only when their content matches the dataset's blocks")
    get.set_defaults(func=cmd_get)

    ls = sub.add_parser("ls", help="list the files of a dataset",
                        description="List the files of a dataset (or of a directory in it), one path per line, "
                                    "then empty directories with a trailing /.")
    ls.add_argument("target", metavar="LOCATOR[/path]")
    ls.add_argument("-l", "--long", action="store_true", help="show sizes")
    add_json(ls, "every file and directory with its type and size")
    ls.set_defaults(func=cmd_ls)

    cat = sub.add_parser("cat", help="write files of datasets (or plain blocks) to stdout",
                         description="Write each named file of a dataset (LOCATOR/path), or each plain block, "
                                     "to stdout in order. Blocks shared by several targets are fetched once.")
    cat.add_argument("targets", nargs="+", metavar="LOCATOR/path")
    cat.set_defaults(func=cmd_cat)
