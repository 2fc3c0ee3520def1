"""What ``keep put`` stores: the files under its paths, chosen by --exclude/--include and the symlink policy."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..locator import MAX_BLOCK_SIZE

__all__ = ["Entry", "Filter", "Plan", "Rule", "plan_put"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ``--exclude`` or ``--include`` pattern (fnmatch, case-sensitive).

    A pattern without ``/`` matches a file or directory name at any depth; one with ``/`` (a
    leading ``/`` is dropped) matches the whole path relative to the directory given to put.
    A trailing ``/`` makes it match directories only.
    """

    pattern: str
    include: bool

    @property
    def dir_only(self) -> bool:
        return self.pattern.endswith("/")

    @property
    def _body(self) -> str:
        return self.pattern.rstrip("/").lstrip("/")

    @property
    def anchored(self) -> bool:
        return "/" in self.pattern.rstrip("/")

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        subject = rel if self.anchored else rel.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(subject, self._body)

    def __str__(self) -> str:
        return f"--{'include' if self.include else 'exclude'} {self.pattern}"


@dataclasses.dataclass(frozen=True)
class Filter:
    """Rules in command-line order: the last one that matches a path decides.

    A path no rule matches is stored, unless the first rule is an ``--include`` (a list of what
    to store): then files no rule matches are left out, and directories are still searched.
    A directory an ``--exclude`` decides on is not searched, so nothing under it can be included.

    Args:
        rules: The ``--exclude``/``--include`` rules, in command-line order.
    """

    rules: tuple[Rule, ...] = ()

    @classmethod
    def of(cls, rules: Iterable[tuple[str, str]] | None) -> "Filter":
        """From ``(kind, pattern)`` pairs, kind ``include`` or ``exclude``."""
        out = []
        for kind, pattern in rules or ():
            if not pattern.strip("/"):
                raise ValueError(f"empty --{kind} pattern {pattern!r}")
            out.append(Rule(pattern, kind == "include"))
        return cls(tuple(out))

    def _decision(self, rel: str, is_dir: bool) -> bool | None:
        for rule in reversed(self.rules):
            if rule.matches(rel, is_dir):
                return rule.include
        return None

    @property
    def _listing(self) -> bool:
        return bool(self.rules) and self.rules[0].include

    def keeps_file(self, rel: str) -> bool:
        decided = self._decision(rel, False)
        return not self._listing if decided is None else decided

    def searches_dir(self, rel: str) -> bool:
        return self._decision(rel, True) is not False

    def records_dir(self, rel: str) -> bool:
        """Whether a directory is stored as an entry of its own (so kept even when empty)."""
        decided = self._decision(rel, True)
        return not self._listing if decided is None else decided


@dataclasses.dataclass(frozen=True, slots=True)  # slots: a plan holds one per file
class Entry:
    """One thing put stores: a file (from *source*, ``-`` for stdin) or a directory, at dataset *path*.

    Args:
        path: Where it goes in the dataset.
        source: The local path (``-``: stdin; None for a directory).
        size: Its size in bytes (None for stdin and directories).
        kind: ``"file"`` or ``"directory"``.
    """

    path: str
    source: str | None
    size: int | None  # None for stdin and directories
    kind: str  # "file" or "directory"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Plan:
    """What a put would store, and what it leaves out (symbolic links, loops, special files).

    Args:
        entries: What is stored, in order.
        links: Symbolic links not followed.
        loops: Symbolic links back to a directory above them.
        special: Fifos, sockets and devices left out.
        excluded: Files and directories a rule left out.
    """

    entries: list[Entry] = dataclasses.field(default_factory=list)
    links: list[str] = dataclasses.field(default_factory=list)  # symlinks not followed
    loops: list[str] = dataclasses.field(default_factory=list)  # symlinks back to a directory above them
    special: list[str] = dataclasses.field(default_factory=list)  # fifos, sockets, devices
    excluded: int = 0  # files and directories a rule left out

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind == "file")

    @property
    def bytes(self) -> int | None:
        """The bytes to store, None when stdin (size unknown until read) is among them."""
        sizes = [e.size for e in self.entries if e.kind == "file"]
        return None if None in sizes else sum(s for s in sizes if s is not None)

    @staticmethod
    def blocks_for(nbytes: int, block_size: int = MAX_BLOCK_SIZE) -> int:
        """Data blocks for *nbytes*: files are packed one after another into full blocks."""
        return -(-nbytes // block_size)

    def left_out_notice(self) -> str | None:
        """One line about what was left out, or None when nothing was."""
        parts = []
        if self.links:
            s = "" if len(self.links) == 1 else "s"
            parts.append(f"{len(self.links)} symbolic link{s} not followed (first: {self.links[0]}; "
                         f"--follow-links stores what they point to)")
        if self.loops:
            parts.append(f"{len(self.loops)} symbolic link loop{'s' * (len(self.loops) > 1)} "
                         f"(first: {self.loops[0]})")
        if self.special:
            parts.append(f"{len(self.special)} special file{'s' * (len(self.special) > 1)} such as fifos "
                         f"or sockets (first: {self.special[0]})")
        return "left out " + "; ".join(parts) if parts else None

    def with_stdin_size(self, size: int) -> "Plan":
        """This plan with stdin's size filled in (a dry run reads stdin to count it)."""
        entries = [dataclasses.replace(e, size=size) if e.source == "-" else e for e in self.entries]
        return dataclasses.replace(self, entries=entries)

    def to_dict(self) -> dict[str, Any]:
        total = self.bytes
        return {"dry_run": True, "files": self.files,
                "directories": sum(1 for e in self.entries if e.kind == "directory"),
                "bytes": total, "blocks": None if total is None else self.blocks_for(total),
                "entries": [e.to_dict() for e in self.entries],
                "left_out": {"symlinks": self.links, "loops": self.loops, "special": self.special,
                             "excluded": self.excluded}}


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


class _Walk:
    """Depth-first, in name order: a directory's files, then its sub-directories (as add_tree did)."""

    def __init__(self, plan: Plan, rules: Filter, follow_links: bool) -> None:
        self.plan, self.rules, self.follow = plan, rules, follow_links

    def tree(self, root: str, prefix: str) -> None:
        top = os.stat(root)
        if prefix:
            self.plan.entries.append(Entry(prefix, None, None, "directory"))
        # (directory on disk, path relative to root, ancestors' (st_dev, st_ino) for loop checks)
        stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(root, "", frozenset({(top.st_dev, top.st_ino)}))]
        while stack:
            here, rel, above = stack.pop()
            if rel and self.rules.records_dir(rel):
                self.plan.entries.append(Entry(_join(prefix, rel), None, None, "directory"))
            files: list[tuple[str, str, int]] = []
            dirs: list[tuple[str, str, frozenset[tuple[int, int]]]] = []
            with os.scandir(here) as it:
                listing = sorted(it, key=lambda e: e.name)
            for entry in listing:
                self._classify(entry, _join(rel, entry.name), above, files, dirs)
            for full, path, size in files:
                self.plan.entries.append(Entry(_join(prefix, path), full, size, "file"))
            stack.extend(reversed(dirs))  # popped in name order: depth first, like os.walk

    def _classify(self, entry: os.DirEntry[str], rel: str, above: frozenset[tuple[int, int]],
                  files: list[tuple[str, str, int]], dirs: list[tuple[str, str, frozenset[tuple[int, int]]]]) -> None:
        shown = entry.path
        if entry.is_symlink() and not self.follow:
            self.plan.links.append(shown)
            return
        try:
            st = entry.stat(follow_symlinks=True)
        except FileNotFoundError:
            raise FileNotFoundError(2, "dangling symbolic link (its target does not exist)", shown) from None
        if stat.S_ISDIR(st.st_mode):
            if not self.rules.searches_dir(rel):
                self.plan.excluded += 1
                return
            key = (st.st_dev, st.st_ino)
            if key in above:
                self.plan.loops.append(shown)
                return
            dirs.append((entry.path, rel, above | {key}))
        elif stat.S_ISREG(st.st_mode):
            if self.rules.keeps_file(rel):
                files.append((entry.path, rel, st.st_size))
            else:
                self.plan.excluded += 1
        else:
            self.plan.special.append(shown)


def plan_put(paths: list[str], *, name: str | None = None, rules: Filter | None = None,
             follow_links: bool = False) -> Plan:
    """What ``keep put PATHS`` stores, in the order it stores it.

    One directory is stored as the dataset's root; several paths each go under their base name
    (a single file under *name* when given; stdin, ``-``, as *name* or ``stdin``). Paths named
    here are always followed and stored; *rules* and *follow_links* apply inside directories.
    """
    plan = Plan()
    walk = _Walk(plan, rules or Filter(), follow_links)
    single_dir = len(paths) == 1 and paths[0] != "-" and os.path.isdir(paths[0])
    for p in paths:
        if p == "-":
            plan.entries.append(Entry(name or "stdin", "-", None, "file"))
        elif os.path.isdir(p):
            walk.tree(p, "" if single_dir else Path(os.path.abspath(p)).name)
        else:
            st = os.stat(p)
            size = st.st_size if stat.S_ISREG(st.st_mode) else None  # e.g. a pipe: keep put <(command)
            plan.entries.append(Entry(name if (name and len(paths) == 1) else Path(p).name, p, size, "file"))
    return plan
