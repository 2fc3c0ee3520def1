"""What ``keep put/get/ls`` print: dry-run plans and ``--json`` reports (shapes in docs/cli.md)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any, BinaryIO

from ..datasets.manifest import Manifest
from ..locator import Locator
from .progress import format_bytes
from .selection import Plan

__all__ = ["Planned", "ls_entries", "print_block_plan", "print_get", "print_ls", "print_put_plan"]

_COUNT_CHUNK = 8 << 20


def _dump(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def print_put_plan(plan: Plan, stdin: BinaryIO, *, as_json: bool, update: str | None = None,
                   remove: list[str] | None = None) -> int:
    """Show what ``keep put --dry-run`` would store; stdin, when given as ``-``, is read to count it.
    With *update*, the listed files go on top of that dataset's (less *remove*), which is not read."""
    if any(e.source == "-" for e in plan.entries):
        size = 0
        while chunk := stdin.read(_COUNT_CHUNK):
            size += len(chunk)
        plan = plan.with_stdin_size(size)
    doc = plan.to_dict()
    if update is not None:
        doc.update(update=update, remove=list(remove or ()))
    if as_json:
        _dump(doc)
        return 0
    for e in plan.entries:
        if e.kind == "directory":
            print(f"{'-':>12} {e.path}/")
        else:
            print(f"{'?' if e.size is None else e.size:>12} {e.path}")
    total = doc["bytes"]
    shown = "an unknown number of bytes" if total is None else f"{format_bytes(total)} ({total} bytes)"
    blocks = "" if doc["blocks"] is None else f" in {_count(doc['blocks'], 'data block')} and a manifest block"
    onto = "" if update is None else f" on top of the files of {update}" + (
        f" less {len(remove or ())} removed" if remove else "")
    print(f"would store {_count(doc['files'], 'file')}, {shown}{blocks}{onto}; nothing sent")
    return 0


def print_block_plan(paths: list[str], locators: list[Locator], *, as_json: bool) -> int:
    """``keep put --blocks --dry-run``: each file's block locator, computed here, not stored."""
    if as_json:
        _dump({"dry_run": True, "blocks": [{"source": p, "locator": str(loc), "size": loc.size}
                                           for p, loc in zip(paths, locators, strict=True)]})
        return 0
    for p, loc in zip(paths, locators, strict=True):
        print(f"{loc} {p}")
    print(f"would store {_count(len(locators), 'block')}; nothing sent")
    return 0


@dataclasses.dataclass(frozen=True)
class Planned:
    """One file ``keep get`` writes: its path in the dataset, where it goes (``-``: stdout), its size.

    Args:
        path: The file's path in the dataset.
        dest: Where it goes (``-``: stdout).
        size: Its size in bytes, if known.
    """

    path: str
    dest: str
    size: int | None

    def to_dict(self, dry_run: bool) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if dry_run:  # whether the get would replace something
            d["exists"] = self.dest != "-" and os.path.lexists(self.dest)
        return d


def print_get(target: str, dest: str, planned: list[Planned], *, directories: int = 0, dry_run: bool,
              as_json: bool) -> int:
    """The ``keep get`` report: with --dry-run what would be written, with --json what was."""
    sizes = [p.size for p in planned]
    total = None if None in sizes else sum(s for s in sizes if s is not None)
    if as_json:
        _dump({"dry_run": dry_run, "target": target, "dest": dest, "files": len(planned),
               "directories": directories, "bytes": total, "entries": [p.to_dict(dry_run) for p in planned]})
        return 0
    if not dry_run:
        return 0
    for p in planned:
        print(f"{'?' if p.size is None else p.size:>12} {p.dest}")
    shown = "?" if total is None else f"{format_bytes(total)} ({total} bytes)"
    where = "stdout" if dest == "-" else dest
    print(f"would write {_count(len(planned), 'file')}, {shown}, to {where}; nothing written")
    return 0


def ls_entries(manifest: Manifest, path: str) -> list[dict[str, Any]]:
    """The files, then the directories, at and under *path* (a file: just that file)."""
    if path and not manifest.is_dir(path):
        f = manifest.file(path)
        return [{"path": f.path, "type": "file", "size": f.size}]
    prefix = f"{path}/" if path else ""
    entries: list[dict[str, Any]] = [{"path": f.path, "type": "file", "size": f.size}
                                     for f in manifest.walk_files() if f.path.startswith(prefix)]
    entries += [{"path": d, "type": "directory", "size": None, "empty": not manifest.listdir(d)}
                for d in sorted(manifest.directories) if d.startswith(prefix)]
    return entries


def print_ls(target: str, entries: Iterable[dict[str, Any]], *, long: bool, as_json: bool) -> None:
    """``keep ls``: files (and empty directories, with a ``/``), one per line, or the JSON report."""
    if as_json:
        _dump({"target": target, "entries": list(entries)})
        return
    for e in entries:
        if e["type"] == "file":
            print(f"{e['size']:>12} {e['path']}" if long else e["path"])
        elif e["empty"]:
            print(f"{'-':>12} {e['path']}/" if long else f"{e['path']}/")
