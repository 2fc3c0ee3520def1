"""Options several ``keep`` commands share: --progress, --json, --dry-run, --exclude/--include, --follow-links."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .progress import ProgressMode

__all__ = ["add_dry_run", "add_filters", "add_json", "add_progress", "completes_paths"]

# shtab's FILE marker (shtab.FILE): how each shell's completion script completes local paths
_PATHS = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}


def completes_paths(action: argparse.Action) -> argparse.Action:
    """Mark *action* as naming local files or directories, for ``keep completion``."""
    action.complete = _PATHS  # type: ignore[attr-defined]  # read by shtab
    return action


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress MODE`` and its short form ``--no-progress`` (both set ``args.progress``)."""
    modes = [m.value for m in ProgressMode]
    parser.add_argument("--progress", choices=modes, default=ProgressMode.AUTO.value, metavar="MODE",
                        help="auto (a bar and a summary line on a terminal, else nothing), bar, "
                             "json (one JSON object per line), summary (the last line only) or none; "
                             "always on stderr")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=ProgressMode.NONE.value,
                        help="the same as --progress=none")


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON document on stdout")


def add_dry_run(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-n", "--dry-run", action="store_true", help=f"show {what}; send and write nothing")


class _Rule(argparse.Action):
    """Appends ``(kind, pattern)`` to one list, so --exclude and --include keep their relative order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        rules = list(getattr(namespace, self.dest, None) or [])
        rules.append((self.const, values))
        setattr(namespace, self.dest, rules)


def add_filters(parser: argparse.ArgumentParser) -> None:
    """``--exclude``/``--include`` (into ``args.rules``) and ``--follow-links``/``--no-follow-links``."""
    parser.add_argument("--exclude", dest="rules", action=_Rule, const="exclude", metavar="PATTERN", default=[],
                        help="leave out files and directories matching PATTERN (repeatable; see docs/cli.md)")
    parser.add_argument("--include", dest="rules", action=_Rule, const="include", metavar="PATTERN",
                        help="store what matches PATTERN; the last matching rule wins, and a first "
                             "--include stores only what some --include matches")
    parser.add_argument("--follow-links", action=argparse.BooleanOptionalAction, default=False,
                        help="store what symbolic links inside directories point to (default: leave "
                             "the links out, with one notice; links named as PATH are always followed)")
