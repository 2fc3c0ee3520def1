"""The ``keep`` command line: put, get and head blocks (and more, registered by other modules)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from . import __version__
from .errors import BlockNotFound, KeepError
from .locator import MAX_BLOCK_SIZE, Locator
from .store import BlockStore

__all__ = ["main", "open_store"]

log = logging.getLogger(__name__)

# Modules that add sub-commands: each has register(subparsers). Listed here, not discovered,
# so `keep --help` is the same on every install.
_REGISTRARS = ("keepstore.server.command", "keepstore.contrib.fuse")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def open_store(args: argparse.Namespace) -> BlockStore:
    """The store a command works on: `KeepClient.from_env()` (a LocalStore when nothing is set)."""
    from .client import KeepClient

    return KeepClient.from_env()


def _cmd_put(args: argparse.Namespace) -> int:
    store = open_store(args)
    with store:
        for name in args.paths:
            data = _read_input(name)
            loc = store.put(data, copies=args.copies, storage_classes=args.storage_classes)
            print(loc, flush=True)
    return EXIT_OK


def _read_input(name: str) -> bytes:
    if name == "-":
        data = sys.stdin.buffer.read(MAX_BLOCK_SIZE + 1)
    else:
        size = os.stat(name).st_size
        if size > MAX_BLOCK_SIZE:
            raise KeepError(f"{name}: {size} bytes is more than one block (64 MiB)")
        with open(name, "rb") as f:
            data = f.read(MAX_BLOCK_SIZE + 1)
    if len(data) > MAX_BLOCK_SIZE:
        raise KeepError(f"{name}: more than one block (64 MiB)")
    return data


def _cmd_get(args: argparse.Namespace) -> int:
    loc = Locator.parse(args.locator)
    store = open_store(args)
    with store:
        data = store.get(loc)
    if args.dest in (None, "-"):
        out: BinaryIO = sys.stdout.buffer
        out.write(data)
        out.flush()
    else:
        _write_atomically(args.dest, data)
    return EXIT_OK


def _write_atomically(dest: str, data: bytes) -> None:
    import tempfile

    if os.path.isdir(dest):
        raise KeepError(f"{dest} is a directory; name a file to write the block to")
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        fd, temp = tempfile.mkstemp(prefix=".keep-", dir=directory)
    except OSError as exc:  # name what the user asked for, not our temp file
        raise OSError(exc.errno, exc.strerror, dest) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, dest)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _cmd_head(args: argparse.Namespace) -> int:
    loc = Locator.parse(args.locator)
    store = open_store(args)
    with store:
        store.head(loc)
    print(f"{loc} present")
    return EXIT_OK


def _storage_classes(text: str) -> list[str]:
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if not classes:
        raise argparse.ArgumentTypeError("need at least one storage class name")
    return classes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keep",
        description="Store and fetch content-addressed blocks in Keep services or a local store.",
    )
    parser.add_argument("--version", action="version", version=f"keepstore {__version__}")
    parser.add_argument("--debug", action="store_true", help="log requests and show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    put = sub.add_parser("put", help="store files (or - for stdin) and print their locators")
    put.add_argument("paths", nargs="+", metavar="FILE", help="files to store; - reads stdin")
    put.add_argument("--copies", type=_positive_int, default=None, help="replicas wanted (default 2)")
    put.add_argument("--storage-classes", type=_storage_classes, default=None, metavar="A,B",
                     help="storage classes wanted, comma-separated")
    put.set_defaults(func=_cmd_put)

    get = sub.add_parser("get", help="fetch a block to a file or stdout")
    get.add_argument("locator", help="block locator")
    get.add_argument("dest", nargs="?", default=None, help="file to write (default: stdout, or -)")
    get.set_defaults(func=_cmd_get)

    head = sub.add_parser("head", help="check that a block is stored (exit 3 when it is not)")
    head.add_argument("locator", help="block locator")
    head.set_defaults(func=_cmd_head)

    for name in _REGISTRARS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("keep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `keep get ... | head`): not an error worth a message.
        _silence_stdout()
        return EXIT_OK
    except BlockNotFound as exc:
        return _fail(args, exc, EXIT_NOT_FOUND)
    except (KeepError, OSError) as exc:
        return _fail(args, exc, EXIT_ERROR)


def _fail(args: Any, exc: BaseException, code: int) -> int:
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}"
    print(f"keep: error: {message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:  # stdout already closed: nothing left to silence
        pass
