"""The namespace of a `StagingTree`: directories and files, each change journaled, replayed on reopen."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .staging_nodes import Dir, File, StagingAttr, fail, split
from .tree import ReadPath, normalize_path

__all__ = ["Namespace"]


class Namespace:
    """Paths to `Dir`/`File` nodes over an optional base dataset; `StagingTree` adds content and commit.

    Every change is applied in memory, then appended to the journal (one JSON line) before the
    call returns; `apply` replays a line.
    """

    root: Dir
    base: ReadPath | None
    created_ns: int
    generation: int
    _lock: threading.RLock
    _clock: Callable[[], int]
    _journal: int
    _journal_path: str
    _objects: str
    _next_obj: int

    def _log(self, op: str, **fields: Any) -> None:
        """Append one change to the journal (called with the lock held, after the change is made)."""
        self.generation += 1
        line = json.dumps({"op": op, **fields}, separators=(",", ":")) + "\n"
        os.write(self._journal, line.encode("utf-8", "surrogateescape"))

    def apply(self, r: dict[str, Any]) -> None:
        op, t = r["op"], r.get("t", self.created_ns)
        if op == "mkdir":
            parent, name = self._parent(r["path"])
            parent.children_of(self)[name] = Dir(mode=r["mode"], mtime_ns=t)
            parent.mtime_ns = t
        elif op == "create":
            parent, name = self._parent(r["path"])
            parent.children_of(self)[name] = File(mode=r["mode"], mtime_ns=t, obj=r["obj"])
            parent.mtime_ns = t
        elif op == "copyup":
            node = self._file(r["path"])
            node.obj, node.base_path = r["obj"], None
        elif op in ("unlink", "rmdir"):
            parent, name = self._parent(r["path"])
            del parent.children_of(self)[name]
            parent.mtime_ns = t
        elif op == "rename":
            self._move(r["src"], r["dst"], t)
        elif op == "utime":
            self._node(r["path"]).mtime_ns = r["mtime"]
        elif op == "chmod":
            self._node(r["path"]).mode = r["mode"]
        else:
            raise ValueError(f"unknown journal record {op!r}")

    # -- namespace ----------------------------------------------------------------------------

    def _node(self, path: str) -> Dir | File:
        node: Dir | File = self.root
        for part in split(path):
            if not isinstance(node, Dir):
                fail(errno.ENOTDIR, path)
            child = node.children_of(self).get(part)
            if child is None:
                fail(errno.ENOENT, path)
            node = child
        return node

    def _file(self, path: str) -> File:
        node = self._node(path)
        if isinstance(node, Dir):
            fail(errno.EISDIR, path)
        return node

    def _parent(self, path: str) -> tuple[Dir, str]:
        parts = split(path)
        if not parts:
            fail(errno.EBUSY, "/")
        parent = self._node("/".join(parts[:-1]))
        if not isinstance(parent, Dir):
            fail(errno.ENOTDIR, path)
        return parent, parts[-1]

    def base_children(self, base_path: str) -> dict[str, Dir | File]:
        """The entries of directory *base_path* of the base dataset, as staging nodes (loaded once)."""
        assert self.base is not None
        out: dict[str, Dir | File] = {}
        prefix = f"{base_path}/" if base_path else ""
        for name in self.base.readdir(base_path):
            attr = self.base.lookup(prefix + name)
            mtime = self.created_ns  # a dataset has no mtimes: the staging's birth, the same on every reopen
            out[name] = (Dir(mode=0o755, mtime_ns=mtime, base_path=prefix + name) if attr.is_dir
                         else File(mode=0o644, mtime_ns=mtime, base_path=prefix + name, base_size=attr.size))
        return out

    def _obj_path(self, obj: int) -> str:
        return os.path.join(self._objects, str(obj))

    def _new_object(self) -> tuple[int, int]:
        obj, self._next_obj = self._next_obj, self._next_obj + 1
        fd = os.open(self._obj_path(obj), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return obj, fd

    def _attr(self, path: str, node: Dir | File) -> StagingAttr:
        if isinstance(node, Dir):
            return StagingAttr(path, True, 0, node.mtime_ns, stat.S_IFDIR | node.mode)
        if node.obj is None:
            return StagingAttr(path, False, node.base_size, node.mtime_ns, stat.S_IFREG | node.mode)
        st = os.fstat(node.fd) if node.fd is not None else os.stat(self._obj_path(node.obj))
        return StagingAttr(path, False, st.st_size, st.st_mtime_ns, stat.S_IFREG | node.mode)

    def lookup(self, path: str) -> StagingAttr:
        """The attributes of *path* (`FileNotFoundError` when there is none)."""
        with self._lock:
            return self._attr(normalize_path(path), self._node(path))

    getattr = lookup

    def readdir(self, path: str = "") -> list[str]:
        with self._lock:
            node = self._node(path)
            if not isinstance(node, Dir):
                fail(errno.ENOTDIR, path)
            return sorted(node.children_of(self))

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        with self._lock:
            parent, name = self._parent(path)
            children = parent.children_of(self)
            if name in children:
                fail(errno.EEXIST, path)
            t = self._clock()
            children[name] = Dir(mode=mode & 0o7777, mtime_ns=t)
            parent.mtime_ns = t
            self._log("mkdir", path=normalize_path(path), mode=mode & 0o7777, t=t)

    def rmdir(self, path: str) -> None:
        with self._lock:
            parent, name = self._parent(path)
            node = parent.children_of(self).get(name)
            if node is None:
                fail(errno.ENOENT, path)
            if not isinstance(node, Dir):
                fail(errno.ENOTDIR, path)
            if node.children_of(self):
                fail(errno.ENOTEMPTY, path)
            self._remove(parent, name, "rmdir", path)

    def unlink(self, path: str) -> None:
        with self._lock:
            parent, name = self._parent(path)
            node = parent.children_of(self).get(name)
            if node is None:
                fail(errno.ENOENT, path)
            if isinstance(node, Dir):
                fail(errno.EISDIR, path)
            self._remove(parent, name, "unlink", path)

    def _remove(self, parent: Dir, name: str, op: str, path: str) -> None:
        node = parent.children_of(self).pop(name)
        t = self._clock()
        parent.mtime_ns = t
        self._log(op, path=normalize_path(path), t=t)
        if isinstance(node, File):
            self._drop(node)

    def _drop(self, node: File) -> None:
        """*node* left the tree: its content goes once no handle has it open (an fd keeps it readable)."""
        node.unlinked = True
        if node.obj is not None:
            with contextlib.suppress(FileNotFoundError):  # already gone (a replayed journal removed it)
                os.unlink(self._obj_path(node.obj))

    def rename(self, src: str, dst: str) -> None:
        """Move *src* to *dst*, atomically replacing a file (or an empty directory) there, as rename(2)."""
        with self._lock:
            t = self._clock()
            replaced = self._move(src, dst, t)
            self._log("rename", src=normalize_path(src), dst=normalize_path(dst), t=t)
            if isinstance(replaced, File):
                self._drop(replaced)

    def _move(self, src: str, dst: str, t: int) -> Dir | File | None:
        sparent, sname = self._parent(src)
        node = sparent.children_of(self).get(sname)
        if node is None:
            fail(errno.ENOENT, src)
        dparent, dname = self._parent(dst)
        s_parts, d_parts = split(src), split(dst)
        if s_parts == d_parts:
            return None
        if isinstance(node, Dir) and d_parts[:len(s_parts)] == s_parts:
            fail(errno.EINVAL, dst)  # a directory cannot move inside itself
        target = dparent.children_of(self).get(dname)
        if target is not None:
            if isinstance(node, Dir) and not isinstance(target, Dir):
                fail(errno.ENOTDIR, dst)
            if isinstance(target, Dir):
                if not isinstance(node, Dir):
                    fail(errno.EISDIR, dst)
                if target.children_of(self):
                    fail(errno.ENOTEMPTY, dst)
        del sparent.children_of(self)[sname]
        dparent.children_of(self)[dname] = node
        sparent.mtime_ns = dparent.mtime_ns = t
        return target

    def utime(self, path: str, mtime_ns: int | None = None) -> None:
        """Set the modification time of *path* (now when None)."""
        with self._lock:
            node = self._node(path)
            t = self._clock() if mtime_ns is None else int(mtime_ns)
            if isinstance(node, File) and node.obj is not None:
                os.utime(self._obj_path(node.obj), ns=(t, t))  # a local file's own mtime is the truth
            else:
                node.mtime_ns = t
                self._log("utime", path=normalize_path(path), mtime=t)

    def chmod(self, path: str, mode: int) -> None:
        """Record permission bits (shown by stat; a dataset itself has no modes)."""
        with self._lock:
            node = self._node(path)
            node.mode = mode & 0o7777
            self._log("chmod", path=normalize_path(path), mode=node.mode)

    def _walk_files(self, top: Dir | None = None, prefix: str = "") -> Iterator[tuple[str, File]]:
        for name, node in sorted((top or self.root).children_of(self).items()):
            path = f"{prefix}{name}"
            if isinstance(node, Dir):
                yield from self._walk_files(node, f"{path}/")
            else:
                yield path, node

    def _empty_dirs(self, top: Dir | None = None, prefix: str = "") -> Iterator[str]:
        for name, node in sorted((top or self.root).children_of(self).items()):
            if isinstance(node, Dir):
                if node.children_of(self):
                    yield from self._empty_dirs(node, f"{prefix}{name}/")
                else:
                    yield f"{prefix}{name}"
