"""What a put stores, listed before reading: each file's source, dataset path and stat, in write order."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .receipt import DatasetError

__all__ = ["Entry", "Inventory", "dataset_path", "inventory", "walk_tree"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One local file to store: where it is, where it goes, and its stat when listed.

    Args:
        source: The local path, absolute (``-``: stdin).
        path: Where it goes in the dataset.
        size: Its size in bytes when listed (-1: stdin).
        mtime_ns: Its modification time, in nanoseconds.
        dev: Its device number.
        ino: Its inode number.
    """

    source: str  # absolute
    path: str  # inside the dataset
    size: int
    mtime_ns: int
    dev: int
    ino: int

    @classmethod
    def of(cls, source: str, path: str, st: os.stat_result | None = None) -> "Entry":
        st = st if st is not None else os.stat(source)
        return cls(os.path.abspath(source), path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)

    @classmethod
    def stdin(cls, path: str) -> "Entry":
        """Standard input, stored as *path* (size unknown: -1)."""
        return cls("-", dataset_path(path), -1, 0, 0, 0)

    @property
    def identity(self) -> tuple[int, int, int, int]:
        """What says the file is unchanged: size, mtime_ns, device and inode."""
        return (self.size, self.mtime_ns, self.dev, self.ino)


@dataclasses.dataclass(frozen=True)
class Inventory:
    """Files (in the order they are written, so block packing follows it) and directories.

    Args:
        files: The files, in the order they are written (block packing follows it).
        directories: The directories.
    """

    files: tuple[Entry, ...]
    directories: tuple[str, ...]

    @property
    def total_size(self) -> int | None:
        """Bytes to store; None when stdin is among them."""
        return None if any(e.source == "-" for e in self.files) else sum(e.size for e in self.files)


def dataset_path(path: str) -> str:
    """*path* as a dataset path (``a/b``); `DatasetError` for an empty one or one with ``..``."""
    parts = [p for p in path.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise DatasetError(f"invalid dataset path {path!r}")
    return "/".join(parts)


def walk_tree(source: str | os.PathLike[str], prefix: str = "") -> Iterator[Entry | str]:
    """Every file (an `Entry`) and directory (its dataset path) under *source*, stored under
    *prefix*: top-down, names sorted, so the order is the same on every run. Symbolic links to
    files are followed; a dangling one is an error (`FileNotFoundError`)."""
    source = Path(source)
    if not source.is_dir():
        raise NotADirectoryError(str(source))
    base = dataset_path(prefix) if prefix else ""
    if base:
        yield base
    for root, dirnames, filenames in os.walk(source):
        dirnames.sort()
        rel = os.path.relpath(root, source)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        here = "/".join(p for p in (base, rel) if p)
        if here and here != base:
            yield here
        for name in sorted(filenames):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                if os.path.islink(full):
                    raise FileNotFoundError(f"{full}: dangling symbolic link") from None
                raise
            yield Entry.of(full, "/".join(p for p in (here, name) if p), st)


def inventory(paths: Iterable[str], name: str | None = None) -> Inventory:
    """The files and directories ``keep put PATH...`` stores: a single directory's contents at
    the root; with several paths, each under its base name; a single file as *name* (default its
    base name); stdin (``-``) as *name* (default ``stdin``)."""
    paths = list(paths)
    single_dir = len(paths) == 1 and paths[0] != "-" and os.path.isdir(paths[0])
    files: list[Entry] = []
    dirs: list[str] = []
    for p in paths:
        if p == "-":
            files.append(Entry.stdin(name or "stdin"))
        elif os.path.isdir(p):
            for item in walk_tree(p, "" if single_dir else Path(os.path.abspath(p)).name):
                if isinstance(item, str):
                    dirs.append(item)
                else:
                    files.append(item)
        else:
            files.append(Entry.of(p, dataset_path(name if (name and len(paths) == 1) else Path(p).name)))
    return Inventory(tuple(files), tuple(dirs))
