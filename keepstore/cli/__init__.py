"""The ``keep`` command line: the parser, error handling and exit codes; each sub-module adds commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..errors import BlockNotFound, Cancelled, KeepError
from ..open import open_store
from .notices import RetryNotices, interruptible, leave_within
from .options import add_progress
from .types import positive_int, positive_seconds, storage_classes

__all__ = ["build_parser", "config_report", "main", "open_store"]

log = logging.getLogger(__name__)

EPILOG = """\
where data goes:
  KEEP_SERVICES      space-separated Keep service roots (http[s]://host:port/); with KEEP_TOKEN
  KEEP_TOKEN         the token sent to the services (never printed)
  KEEP_LOCAL_STORE   a local store directory to use instead of services
  KEEP_CACHE_DIR     a disk block cache directory
  KEEP_DEADLINE      seconds a block operation may keep retrying (default 15; or --deadline)
  ARVADOS_API_HOST, ARVADOS_API_TOKEN, ARVADOS_KEEP_SERVICES, ARVADOS_KEEP_PROXY are honoured too.
  config file: $XDG_CONFIG_HOME/keepstore/config.yml (or KEEP_CONFIG); arguments beat the
  environment, which beats the file.
  With nothing configured, blocks go to a local store in $XDG_DATA_HOME/keepstore/blocks
  (~/.local/share/keepstore/blocks).
exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 under-replicated and 5 missing data (check,
  repair), 130 interrupted
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130








_DEADLINE_HELP = ("give up a block operation that is still failing after SECONDS of retries "
                  "(default: KEEP_DEADLINE or the config file's deadline, else 15)")


def _transfer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--copies", type=positive_int, default=None, help="replicas wanted (default 2)")
    parser.add_argument("--storage-classes", type=storage_classes, default=None, metavar="A,B",
                        help="storage classes wanted, comma-separated")
    add_progress(parser)


from .blocks import config_report  # noqa: E402  (re-exported: docs/configuration.md)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keep",
        description="Store and fetch content-addressed blocks in Keep services or a local store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keepstore {__version__}")
    parser.add_argument("--debug", action="store_true", help="log requests and show tracebacks on errors")
    parser.add_argument("--deadline", type=positive_seconds, default=None, metavar="SECONDS", help=_DEADLINE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from . import blocks, completion, datasets, diff, lifecycle, mount, serve, sign

    datasets.register(sub, _transfer_options)
    blocks.register(sub)
    for module in (serve, mount, lifecycle, diff, sign):
        module.register(sub)
    for name, command in sub.choices.items():  # also after the command: `keep get --deadline 5 ...`
        if name not in ("serve", "config"):
            with contextlib.suppress(argparse.ArgumentError):  # the command has its own --deadline
                command.add_argument("--deadline", type=positive_seconds, default=argparse.SUPPRESS, metavar="SECONDS",
                                     help=_DEADLINE_HELP)
    completion.register(sub, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    # Ctrl-C sets `cancel` before it unwinds the command, so the client's threads abort their
    # transfers and backoff waits too; retries are announced on stderr as they happen.
    cancel = threading.Event()
    args.cancel = cancel
    args.on_retry = RetryNotices()
    try:
        with interruptible(cancel):
            return func(args)
    except (KeyboardInterrupt, Cancelled):
        cancel.set()
        print("keep: interrupted", file=sys.stderr, flush=True)
        if argv is None:  # the `keep` process itself: do not wait at exit for a transfer that hangs
            leave_within(2.0)
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
    elif isinstance(exc, OSError) and exc.errno is None and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = _dataset_path_message(args, type(exc), exc.args[0])
    if getattr(args, "progress", None) == "json":  # --progress=json: stderr stays one JSON object a line
        print(json.dumps({"event": "error", "message": message, "exit_code": code}), file=sys.stderr)
        return code
    print(f"keep: error: {message}", file=sys.stderr)
    return code


_PATH_PROBLEMS = {FileNotFoundError: "no file or directory {path}",
                  IsADirectoryError: "{path} is a directory, not a file",
                  NotADirectoryError: "{path} is a file, not a directory"}


def _dataset_path_message(args: Any, kind: type[OSError], path: str) -> str:
    """A dataset path's error, which carries only the path (an OS error always has an errno), with
    the dataset named: ``dataset <locator>: no file or directory 'x'``."""
    targets = [t for t in [getattr(args, "target", None), *(getattr(args, "targets", None) or [])] if t]
    mine = [t for t in targets if path.strip("/") in t] or targets
    problem = next((text for cls, text in _PATH_PROBLEMS.items() if issubclass(kind, cls)), "{path}: " + kind.__name__)
    text = problem.format(path=repr(path.strip("/") or "/"))
    return f"dataset {mine[0].split('/', 1)[0]}: {text}" if mine else text


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:  # stdout already closed: nothing left to silence
        pass
