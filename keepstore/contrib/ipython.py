"""The ``%keep`` IPython line magic: put, get, ls and use, mirroring the ``keep`` command line."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from ..datasets import DatasetReader, DatasetWriter, atomic_write
from ..datasets.manifest import ManifestError
from ..datasets.targets import split_target
from ..errors import KeepError
from ..store import BlockStore

__all__ = ["KeepMagics", "load_ipython_extension", "unload_ipython_extension"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as IPython `UsageError` instead of exiting the kernel."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%keep: {message}\n{self.format_usage()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message or self.format_help())


def _parser() -> _Parser:
    parser = _Parser(prog="%keep", description="Keep datasets from IPython; the keep command line's verbs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    put = sub.add_parser("put", help="store files or directories as a dataset; returns its locator")
    put.add_argument("paths", nargs="+", metavar="PATH")
    put.add_argument("--copies", type=int, default=None, help="replicas wanted")
    put.add_argument("--name", default=None, help="name for a single file inside the dataset")
    get = sub.add_parser("get", help="return a file's (or plain block's) bytes, or write a dataset to DEST")
    get.add_argument("target", metavar="LOCATOR[/path]")
    get.add_argument("dest", nargs="?", default=None, help="directory (or file) to write instead of returning bytes")
    ls = sub.add_parser("ls", help="return the file paths of a dataset (with -l: (size, path) pairs)")
    ls.add_argument("target", metavar="LOCATOR[/path]")
    ls.add_argument("-l", "--long", action="store_true")
    use = sub.add_parser("use", help="read and write through these services (or --local DIR, or --env)")
    use.add_argument("services", nargs="*", metavar="SERVICE", help="Keep service URLs")
    use.add_argument("--token-env", default="KEEP_TOKEN", metavar="NAME",
                     help="environment variable holding the token (default KEEP_TOKEN)")
    use.add_argument("--local", default=None, metavar="DIR", help="a local store directory instead of services")
    use.add_argument("--env", action="store_true", help="back to KeepClient.from_env()")
    use.add_argument("--retries", type=int, default=None)
    sub.add_parser("help", help="show this help")
    return parser


@magics_class
class KeepMagics(Magics):
    """``%keep put|get|ls|use`` with a store from `KeepClient.from_env()` or ``%keep use``."""

    def __init__(self, shell: Any = None, store: BlockStore | None = None) -> None:
        super().__init__(shell)
        self._store = store
        self._parser = _parser()

    @property
    def store(self) -> BlockStore:
        """The store in use: set by ``%keep use``, else `KeepClient.from_env()` on first use."""
        if self._store is None:
            from ..client import KeepClient

            self._store = KeepClient.from_env()
        return self._store

    @line_magic
    def keep(self, line: str) -> Any:
        """%keep put PATH... | get LOCATOR[/path] [DEST] | ls LOCATOR[/path] [-l] | use SERVICE... | help"""
        try:
            words = shlex.split(line)
        except ValueError as exc:  # an unclosed quote
            raise UsageError(f"keep: error: {exc}") from None
        args = self._parser.parse_args(words or ["help"])
        handler = getattr(self, f"_{args.command}")
        try:
            return handler(args)
        except (KeepError, OSError) as exc:  # one clear line, as the command line prints
            raise UsageError(f"keep: error: {exc}") from exc

    def _help(self, args: argparse.Namespace) -> None:
        print(self._parser.format_help())

    def _put(self, args: argparse.Namespace) -> str:
        paths: Sequence[str] = [os.path.expanduser(p) for p in args.paths]
        for p in paths:
            if not os.path.exists(p):
                raise FileNotFoundError(2, "No such file or directory", p)
        single_dir = len(paths) == 1 and os.path.isdir(paths[0])
        with DatasetWriter(self.store, copies=args.copies) as writer:
            for p in paths:
                if os.path.isdir(p):
                    writer.add_tree(p, prefix="" if single_dir else Path(os.path.abspath(p)).name)
                else:
                    writer.add_file(p, args.name if (args.name and len(paths) == 1) else None)
            return writer.finish().locator

    def _get(self, args: argparse.Namespace) -> bytes | str:
        loc, path = split_target(args.target)
        reader = self._reader(loc)
        if reader is None:
            if path:
                raise KeepError(f"{loc} is a plain block, not a dataset; it has no {path!r}")
            data = self.store.get(loc)
            if args.dest is None:
                return data
            atomic_write(args.dest, lambda f: f.write(data))
            return str(args.dest)
        if path and not reader.manifest.is_dir(path):
            if args.dest is None:
                return reader.read_bytes(path)
            dest = Path(args.dest)
            target = dest / path.rsplit("/", 1)[-1] if dest.is_dir() else dest
            content = reader.read_bytes(path)
            atomic_write(target, lambda f: f.write(content))
            return str(target)
        if args.dest is None:
            raise KeepError(f"{args.target} is a dataset directory; give a destination: %keep get {args.target} DIR")
        reader.subtree(path).extract(args.dest)
        return str(args.dest)

    def _ls(self, args: argparse.Namespace) -> list[str] | list[tuple[int, str]]:
        loc, path = split_target(args.target)
        reader = self._reader(loc)
        if reader is None:
            raise KeepError(f"{loc} is a plain block, not a dataset")
        if path and not reader.manifest.is_dir(path):
            files = [reader.stat(path)]
        else:
            prefix = f"{path}/" if path else ""
            files = [f for f in reader.files() if f.path.startswith(prefix)]
        if args.long:
            return [(f.size, f.path) for f in files]
        return [f.path for f in files]

    def _use(self, args: argparse.Namespace) -> None:
        from ..client import KeepClient
        from ..local import LocalStore

        if sum(bool(x) for x in (args.services, args.local, args.env)) != 1:
            raise UsageError("%keep use: give service URLs, or --local DIR, or --env")
        if args.local:
            store: BlockStore = LocalStore(os.path.expanduser(args.local))
        elif args.env:
            store = KeepClient.from_env()
        else:
            token = os.environ.get(args.token_env)
            options: dict[str, Any] = {} if args.retries is None else {"retries": args.retries}
            store = KeepClient(services=list(args.services), token=token, **options)
        old, self._store = self._store, store
        if old is not None:
            old.close()
        print(f"%keep: using {store!r}")

    def _reader(self, loc: Any) -> DatasetReader | None:
        try:
            return DatasetReader(self.store, loc)
        except ManifestError:
            return None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext keepstore.ipython``: register ``%keep``."""
    ipython.register_magics(KeepMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext keepstore.ipython``: close the store the magic opened."""
    magics = ipython.magics_manager.registry.get("KeepMagics")
    if magics is not None:
        magics.close()
