"""The dataset commands of ``keep``: put, get, ls and cat, with tqdm progress on a terminal."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from ..cache import BlockCache, MemoryBlockCache
from ..datasets import DEFAULT_CACHE_BYTES, DatasetReader, atomic_write
from ..datasets.existing import ExistingPolicy, block_file, keep_existing, plan_extract
from ..datasets.extract import extract
from ..datasets.inventory import inventory
from ..datasets.manifest import ManifestError
from ..datasets.resume import journal_for, put_inventory
from ..datasets.targets import split_target
from ..errors import KeepError
from ..locator import MAX_BLOCK_SIZE, Locator
from ..open import open_store

__all__ = ["register"]

_CHUNK = 8 << 20


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int | None, desc: str) -> Iterator[Callable[[int], Any]]:
    """A callback that advances a tqdm bar on stderr, or does nothing when silenced or piped."""
    if args.no_progress or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
              leave=False) as bar:
        yield bar.update


def _input_size(paths: list[str]) -> int | None:
    total = 0
    for p in paths:
        if p == "-":
            return None
        if os.path.isdir(p):
            for root, _dirs, files in os.walk(p):
                total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        else:
            total += os.path.getsize(p)
    return total


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

    for p in args.paths:
        if p != "-" and os.path.isdir(p):
            raise IsADirectoryError(21, "Is a directory (store directories without --blocks)", p)
    with open_store(args) as store:
        for name in args.paths:
            print(store.put(_read_block(name), copies=args.copies, storage_classes=args.storage_classes),
                  flush=True)
    return 0


def cmd_put(args: argparse.Namespace) -> int:

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
    listed = inventory(paths, args.name)
    store = open_store(args)
    with store, _progress(args, listed.total_size, "put") as advance:
        journal, key = (None, "") if args.no_resume else journal_for(
            store, paths, name=args.name, copies=args.copies, storage_classes=args.storage_classes,
            update=args.update, remove=args.remove)
        receipt = put_inventory(store, listed, stdin=sys.stdin.buffer, copies=args.copies,
                                storage_classes=args.storage_classes, progress=advance, journal=journal, key=key,
                                update=args.update, remove=args.remove)
    if args.json:
        print(receipt.to_json(indent=2))
    else:
        print(receipt.locator, flush=True)
    return 0


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

    loc, path = split_target(args.target)
    dest = args.dest
    policy = ExistingPolicy.from_flags(force=args.force, skip_existing=args.skip_existing,
                                       verify_existing=args.verify_existing)
    store = open_store(args)
    with store:
        if args.raw and path:
            raise KeepError("--raw fetches a whole block; drop the /path")
        reader = None if args.raw else _open_reader(store, loc)
        if reader is None:
            if path:
                raise KeepError(f"{loc} is a plain block, not a dataset; it has no {path!r}")
            if dest in (None, "-"):
                sys.stdout.buffer.write(store.get(loc))
                sys.stdout.buffer.flush()
            else:
                target = os.path.join(dest, loc.md5) if os.path.isdir(dest) else dest
                if not keep_existing(target, block_file(loc), policy):
                    data = store.get(loc)
                    atomic_write(target, lambda f: f.write(data))
            return 0
        if path and not reader.manifest.is_dir(path):
            size = reader.stat(path).size
            with _progress(args, size, "get") as advance:
                if dest in (None, "-"):
                    _stream_file(reader, path, sys.stdout.buffer, advance)
                else:
                    target = os.path.join(dest, path.rsplit("/", 1)[-1]) if os.path.isdir(dest) else dest
                    if not keep_existing(target, reader.stat(path), policy, reader.blocks):
                        atomic_write(target, lambda f: _stream_file(reader, path, f, advance))
            return 0
        if dest in (None, "-"):
            raise KeepError(f"{args.target} is a dataset directory; give a destination directory "
                            f"(or LOCATOR/path for one file)")
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise NotADirectoryError(20, "Not a directory", dest)
        sub = reader.subtree(path)
        keep = plan_extract(sub.manifest, dest, policy, sub.blocks)  # every conflict found before writing
        with _progress(args, sub.manifest.total_size, "get") as advance:
            extract(sub.manifest, sub.blocks, dest, progress=advance, skip=keep)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:

    loc, path = split_target(args.target)
    with open_store(args) as store:
        reader = _open_reader(store, loc)
        if reader is None:
            raise KeepError(f"{loc} is a plain block, not a dataset")
        manifest = reader.manifest
        if path and not manifest.is_dir(path):
            f = manifest.file(path)
            print(f"{f.size:>12} {f.path}" if args.long else f.path)
            return 0
        prefix = f"{path}/" if path else ""
        for f in manifest.walk_files():
            if f.path.startswith(prefix):
                print(f"{f.size:>12} {f.path}" if args.long else f.path)
        for d in sorted(manifest.directories):
            if d.startswith(prefix) and not manifest.listdir(d):
                print(f"{'-':>12} {d}/" if args.long else f"{d}/")
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
    put = sub.add_parser("put", help="store files, directories or stdin as a dataset; print its locator")
    put.add_argument("paths", nargs="*", metavar="PATH", help="files or directories; - reads stdin")
    put.add_argument("--json", action="store_true", help="print the receipt as JSON instead of the locator")
    put.add_argument("--name", help="name for the file read from stdin (default 'stdin'), or for a single file")
    put.add_argument("--blocks", action="store_true",
                     help="store each file (at most 64 MiB) as one plain block and print one locator per file")
    put.add_argument("--no-resume", action="store_true",
                     help="neither use nor keep the resume state ($XDG_CACHE_HOME/keepstore/resume)")
    put.add_argument("--update", metavar="LOCATOR",
                     help="store a new dataset: this one plus PATHs (new or replacing files), by reference")
    put.add_argument("--remove", action="append", default=[], metavar="PATH",
                     help="with --update: drop this file or directory (repeatable)")
    common(put)
    put.set_defaults(func=cmd_put, usage_error=put.error)

    get = sub.add_parser("get", help="fetch a dataset (tree), a file in one, or a plain block")
    get.add_argument("target", metavar="LOCATOR[/path]")
    get.add_argument("dest", nargs="?", default=None, help="file or directory to write (default stdout: -)")
    get.add_argument("--raw", action="store_true", help="fetch the block itself even if it is a manifest")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    existing = get.add_mutually_exclusive_group()
    existing.add_argument("-f", "--force", action="store_true", help="overwrite files that exist already")
    existing.add_argument("--skip-existing", action="store_true",
                          help="keep existing files of the right size (re-run an interrupted get)")
    existing.add_argument("--verify-existing", action="store_true",
                          help="keep existing files only when their content matches the dataset's blocks")
    get.set_defaults(func=cmd_get)

    ls = sub.add_parser("ls", help="list the files of a dataset")
    ls.add_argument("target", metavar="LOCATOR[/path]")
    ls.add_argument("-l", "--long", action="store_true", help="show sizes")
    ls.set_defaults(func=cmd_ls)

    cat = sub.add_parser("cat", help="write files of datasets (or plain blocks) to stdout")
    cat.add_argument("targets", nargs="+", metavar="LOCATOR/path")
    cat.set_defaults(func=cmd_cat)
