"""The in-memory tree of a `StagingTree`: directories, files (base or local content), open handles."""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import NoReturn, Protocol

__all__ = ["Dir", "File", "Handle", "StagingAttr", "fail", "split"]


def fail(code: int, path: str) -> NoReturn:
    """Raise the `OSError` subclass for errno *code* (``FileNotFoundError`` for ENOENT, ...)."""
    raise OSError(code, os.strerror(code), path)


def split(path: str) -> list[str]:
    """``"/a//b/"`` -> ``["a", "b"]``; ``..`` is refused (the tree has no parent)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        fail(2, path)
    return parts


class _Loader(Protocol):
    def base_children(self, base_path: str) -> dict[str, Dir | File]: ...


@dataclasses.dataclass(eq=False)
class File:
    """A file: base content (``base_path`` of ``base_size`` bytes) until copied up to local object ``obj``.

    Args:
        mode: Its permission bits.
        mtime_ns: Its modification time, in nanoseconds.
        obj: The number of its local object, once copied up.
        base_path: Its path in the base dataset, if its content is still there.
        base_size: The size of that base content.
        fd: The local object, open while any handle is.
        opens: Handles open on it.
        unlinked: True once removed from the tree (open handles keep it).
    """

    mode: int
    mtime_ns: int
    obj: int | None = None
    base_path: str | None = None
    base_size: int = 0
    fd: int | None = None  # the local object, open while any handle is
    opens: int = 0
    unlinked: bool = False


@dataclasses.dataclass(eq=False)
class Dir:
    """A directory; a base directory's entries are loaded from the base dataset on first use.

    Args:
        mode: Its permission bits.
        mtime_ns: Its modification time, in nanoseconds.
        base_path: Its path in the base dataset, if it came from there.
        children: Its entries, once loaded.
    """

    mode: int
    mtime_ns: int
    base_path: str | None = None
    children: dict[str, Dir | File] | None = None

    def children_of(self, loader: _Loader) -> dict[str, Dir | File]:
        if self.children is None:
            self.children = loader.base_children(self.base_path) if self.base_path is not None else {}
        return self.children


@dataclasses.dataclass(eq=False)
class Handle:
    """One open file: the node (followed across renames and unlinks) and whether it may write.

    Args:
        node: The file (followed across renames and unlinks).
        writable: Whether it may write.
    """

    node: File
    writable: bool


@dataclasses.dataclass(frozen=True)
class StagingAttr:
    """What ``stat`` says about a staged path (times in nanoseconds).

    Args:
        path: The staged path.
        is_dir: True for a directory.
        size: Its size in bytes.
        mtime_ns: Its modification time, in nanoseconds.
        mode: Its mode bits.
    """

    path: str
    is_dir: bool
    size: int
    mtime_ns: int
    mode: int

    def as_stat(self) -> dict[str, int]:
        """The ``st_*`` mapping mfusepy wants with ``use_ns`` (owner: the mounting user)."""
        return {"st_mode": self.mode, "st_nlink": 1, "st_size": self.size, "st_mtime": self.mtime_ns,
                "st_ctime": self.mtime_ns, "st_atime": self.mtime_ns, "st_blocks": (self.size + 511) // 512,
                "st_uid": os.getuid(), "st_gid": os.getgid()}

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)
