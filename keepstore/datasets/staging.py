"""`StagingTree`: a writable tree on local disk, copy-on-write over a base dataset, stored as a new dataset."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import KeepError
from ..store import BlockStore
from .reader import DatasetReader
from .receipt import Receipt, atomic_write
from .staging_namespace import Namespace
from .staging_nodes import Dir, File, Handle, StagingAttr, fail
from .tree import ReadPath, normalize_path
from .writer import DatasetWriter

__all__ = ["DEFAULT_RESERVE", "StagingError", "StagingFullError", "StagingTree", "disk_free"]

log = logging.getLogger(__name__)

DEFAULT_RESERVE = 64 << 20  # free space left on the staging disk for everything else
_COPY_CHUNK = 8 << 20
_STATE = "staging.json"
_JOURNAL = "journal"


class StagingError(KeepError):
    """A staging directory cannot be used (in use, damaged, or not a staging directory)."""


class StagingFullError(StagingError, OSError):
    """The staging disk has no room for a write (``errno`` ENOSPC, so FUSE callers see ENOSPC)."""

    def __init__(self, message: str) -> None:
        OSError.__init__(self, errno.ENOSPC, message)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


def disk_free(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding *path*."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class StagingTree(Namespace):
    """A writable tree kept in *directory*: new and changed files as local files, the rest read
    from *base* (a `ReadPath`) until written, when they are copied up (copy-on-write).

    Every change to the tree is appended to a journal before the call returns, so a staging
    directory left by a killed process is reopened as it was (`reopen`); file content is written
    straight to local files. Writes that would leave less than *reserve* bytes free on the
    staging disk fail with `StagingFullError` (ENOSPC). `commit` stores the tree as a new dataset.
    All methods are thread-safe; paths are ``"a/b"`` (leading/trailing slashes ignored).

    Args:
        directory: Where the staging tree is kept.
        base: The dataset it starts from (a `ReadPath`), or None for an empty tree.
        reserve: Bytes of free space writes must leave on the staging disk.
        free_bytes: How free space is measured (``disk_free``; tests replace it).
        clock: The clock file times come from, in nanoseconds.
    """

    def __init__(self, directory: str | os.PathLike[str], *, base: ReadPath | None = None,
                 reserve: int = DEFAULT_RESERVE, free_bytes: Callable[[str], int] = disk_free,
                 clock: Callable[[], int] = time.time_ns, _existing: bool = False) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.base = base
        self.reserve = reserve
        self._free_bytes = free_bytes
        self._clock = clock
        self._lock = threading.RLock()
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._next_obj = 1
        self.generation = 0  # bumped by every change; a commit records the one it stored
        self.committed: tuple[int, str] | None = None
        self._objects = os.path.join(self.directory, "objects")
        os.makedirs(self._objects, exist_ok=True)
        self._lockfile = self._take_lock()
        state_path = os.path.join(self.directory, _STATE)
        if _existing:
            with open(state_path, encoding="utf-8") as f:
                state = json.load(f)
            self.created_ns = int(state["created_ns"])
        else:
            self.created_ns = clock()
            state = {"version": 1, "base": None if base is None else str(base.locator), "created_ns": self.created_ns}
            atomic_write(state_path, lambda f: f.write(json.dumps(state).encode()))
        self.base_locator: str | None = state["base"]
        self.root = Dir(mode=0o755, mtime_ns=self.created_ns, base_path="" if base is not None else None)
        self._journal_path = os.path.join(self.directory, _JOURNAL)
        if _existing:
            self._replay()
        self._journal = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @classmethod
    def new(cls, directory: str | os.PathLike[str], **options: Any) -> "StagingTree":
        """A new staging tree in *directory* (created; it must be empty if it exists)."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        if os.listdir(directory):
            raise StagingError(f"{directory} is not empty: a new staging directory must be")
        return cls(directory, **options)

    @classmethod
    def reopen(cls, directory: str | os.PathLike[str], **options: Any) -> "StagingTree":
        """Reopen the staging tree in *directory* as its journal left it (after an unmount or a crash).

        Pass ``base=`` the `ReadPath` of `read_base(directory)` when that is not None.
        """
        if cls.read_base(directory) is not None and options.get("base") is None:
            raise StagingError(f"staging {directory} is over a base dataset: open it with base=")
        return cls(directory, _existing=True, **options)

    @staticmethod
    def read_base(directory: str | os.PathLike[str]) -> str | None:
        """The base dataset's locator recorded in staging *directory* (None: no base)."""
        try:
            with open(os.path.join(os.fspath(directory), _STATE), encoding="utf-8") as f:
                base = json.load(f)["base"]
        except (OSError, ValueError, KeyError) as exc:  # missing or damaged: not usable as staging
            raise StagingError(f"{directory} is not a staging directory: {exc}") from exc
        return None if base is None else str(base)

    def __repr__(self) -> str:
        return f"StagingTree({self.directory!r}, base={self.base_locator})"

    # -- locking, journal, replay --------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StagingError(f"staging {self.directory} is in use by process {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _replay(self) -> None:
        try:
            with open(self._journal_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        good = seen = 0
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            if not line.endswith(b"\n"):
                break  # a record cut short by a crash: it never took effect for any caller
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise StagingError(f"{self._journal_path} line {number} is damaged: {exc}") from exc
            try:
                self.apply(record)
            except (OSError, ValueError, KeyError) as exc:
                raise StagingError(f"{self._journal_path} line {number} does not apply: {exc}") from exc
            good += len(line)
            seen = max(seen, int(record.get("obj", 0)))
        if good != len(data):
            with open(self._journal_path, "r+b") as f:
                f.truncate(good)
        used = {node.obj for _path, node in self._walk_files() if node.obj is not None}
        self._next_obj = max(seen, *used, 0) + 1  # never reuse a number the journal has named
        for name in os.listdir(self._objects):  # content of changes the journal never recorded
            if not name.isdigit() or int(name) not in used:
                os.unlink(os.path.join(self._objects, name))
            else:
                self._next_obj = max(self._next_obj, int(name) + 1)
        self.generation = 1  # reopened staging has never been committed by this object

    def fstat(self, fh: int) -> StagingAttr:
        """The attributes of the open file *fh* (still there after an unlink)."""
        with self._lock:
            return self._attr("", self._handle(fh).node)

    # -- content ------------------------------------------------------------------------------

    def _check_room(self, more: int) -> None:
        if more <= 0:
            return
        free = self._free_bytes(self.directory)
        if free - more < self.reserve:
            raise StagingFullError(
                f"staging {self.directory} is full: {free >> 20} MiB free, {more >> 20} MiB more wanted and "
                f"{self.reserve >> 20} MiB kept in reserve (use --staging on a larger disk)")

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            fail(errno.EBADF, str(fh))
        return handle

    def _open_node(self, node: File, writable: bool, truncate: bool, path: str) -> int:
        if truncate and writable:
            self._truncate_node(node, 0, path)
        elif writable and node.obj is None:
            self._copy_up(node, path)
        if node.obj is not None and node.fd is None:
            node.fd = os.open(self._obj_path(node.obj), os.O_RDWR | os.O_CLOEXEC)
        node.opens += 1
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self._handles[fh] = Handle(node, writable)
        return fh

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        """Open file *path* with open(2) *flags* (``O_CREAT`` creates it); return a handle number."""
        with self._lock:
            try:
                node = self._file(path)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                return self.create(path, 0o644, flags)
            if flags & os.O_CREAT and flags & os.O_EXCL:
                fail(errno.EEXIST, path)
            writable = flags & os.O_ACCMODE != os.O_RDONLY
            return self._open_node(node, writable, bool(flags & os.O_TRUNC), path)

    def create(self, path: str, mode: int = 0o644, flags: int = os.O_RDWR | os.O_CREAT) -> int:
        """Create file *path* (empty; an existing file is opened, and emptied with ``O_TRUNC``) and open it."""
        with self._lock:
            parent, name = self._parent(path)
            children = parent.children_of(self)
            existing = children.get(name)
            if existing is not None:
                if isinstance(existing, Dir):
                    fail(errno.EISDIR, path)
                if flags & os.O_EXCL:
                    fail(errno.EEXIST, path)
                return self._open_node(existing, True, bool(flags & os.O_TRUNC), path)
            obj, fd = self._new_object()
            t = self._clock()
            node = File(mode=mode & 0o7777, mtime_ns=t, obj=obj, fd=fd)
            children[name] = node
            parent.mtime_ns = t
            self._log("create", path=normalize_path(path), obj=obj, mode=node.mode, t=t)
            return self._open_node(node, True, False, path)

    def _copy_up(self, node: File, path: str, length: int | None = None) -> None:
        """Give base file *node* local content: its first *length* bytes (all by default)."""
        assert self.base is not None and node.base_path is not None
        size = node.base_size if length is None else min(length, node.base_size)
        self._check_room(size)
        obj, fd = self._new_object()
        try:
            pos = 0
            while pos < size:
                data = self.base.read(node.base_path, pos, min(_COPY_CHUNK, size - pos))
                if not data:
                    raise StagingError(f"base file {node.base_path} ended at {pos} of {size} bytes")
                os.pwrite(fd, data, pos)
                pos += len(data)
            os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
        except BaseException:
            os.close(fd)
            os.unlink(self._obj_path(obj))
            raise
        self._attach(node, obj, fd)
        self._log("copyup", path=normalize_path(path), obj=obj)

    def _attach(self, node: File, obj: int, fd: int) -> None:
        """Make local object *obj* the content of *node*, keeping *fd* only while handles are open."""
        if node.opens == 0:
            os.close(fd)
            fd = None  # type: ignore[assignment]
        node.obj, node.fd, node.base_path = obj, fd, None

    def _truncate_node(self, node: File, length: int, path: str) -> None:
        if node.obj is None:
            if length == node.base_size:
                return
            if length == 0:  # the base content is not needed at all: a new, empty object
                obj, fd = self._new_object()
                self._attach(node, obj, fd)
                self._log("copyup", path=normalize_path(path), obj=obj)
                return
            self._copy_up(node, path, length)
        assert node.obj is not None
        if length > self._attr(path, node).size:
            self._check_room(length - self._attr(path, node).size)
        if node.fd is not None:
            os.ftruncate(node.fd, length)
        else:
            os.truncate(self._obj_path(node.obj), length)
        self.generation += 1

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        """Cut or zero-extend file *path* (or open handle *fh*) to *length* bytes."""
        if length < 0:
            fail(errno.EINVAL, path)
        with self._lock:
            node = self._handle(fh).node if fh is not None else self._file(path)
            self._truncate_node(node, length, path)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        with self._lock:
            node = self._handle(fh).node
            fd, base_path = node.fd, node.base_path
        if fd is not None:
            return os.pread(fd, size, offset)
        assert self.base is not None and base_path is not None
        return self.base.read(base_path, offset, size)  # outside the lock: it may wait on the store

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        with self._lock:
            handle = self._handle(fh)
            if not handle.writable:
                fail(errno.EBADF, str(fh))
            node = handle.node
            assert node.fd is not None
            size = os.fstat(node.fd).st_size
            self._check_room(offset + len(data) - size)
            written = os.pwrite(node.fd, data, offset)
            self.generation += 1
            return written

    def fsync(self, fh: int, datasync: bool = False) -> None:
        """Make *fh*'s content and the tree's journal durable on the staging disk."""
        with self._lock:
            node = self._handle(fh).node
            if node.fd is not None:
                (os.fdatasync if datasync else os.fsync)(node.fd)
            os.fsync(self._journal)

    def release(self, fh: int) -> None:
        with self._lock:
            node = self._handles.pop(fh).node
            node.opens -= 1
            if node.opens == 0 and node.fd is not None:
                os.close(node.fd)
                node.fd = None

    def statfs(self) -> dict[str, int]:
        st = os.statvfs(self.directory)
        return {"f_bsize": st.f_bsize, "f_frsize": st.f_frsize, "f_blocks": st.f_blocks, "f_bfree": st.f_bfree,
                "f_bavail": st.f_bavail, "f_files": st.f_files, "f_ffree": st.f_ffree, "f_namemax": 255}

    # -- commit ---------------------------------------------------------------------------------

    @property
    def clean(self) -> bool:
        """True when the last `commit` stored the tree as it is now."""
        return self.committed is not None and self.committed[0] == self.generation

    def commit(self, store: BlockStore, *, copies: int | None = None,
               storage_classes: Iterable[str] | None = None) -> Receipt:
        """Store the tree as a new dataset and return its receipt; the staging is kept.

        Changes wait while a commit runs, so the dataset is the tree at one moment. Base files
        that were not changed are added by reference to the base's blocks (`DatasetWriter.add_from`):
        neither read nor sent again.
        """
        with self._lock, contextlib.ExitStack() as stack:
            os.fsync(self._journal)
            generation = self.generation
            base = None
            if self.base is not None:
                base = stack.enter_context(DatasetReader.from_manifest(store, self.base.manifest))
            writer = stack.enter_context(DatasetWriter(store, copies=copies, storage_classes=storage_classes))
            for path, node in self._walk_files():
                if node.obj is None:
                    assert base is not None and node.base_path is not None
                    writer.add_from(base, node.base_path, path)
                else:
                    writer.add_file(self._obj_path(node.obj), path)
            for path in self._empty_dirs():
                writer.add_directory(path)
            receipt = writer.finish()
            self.committed = (generation, receipt.locator)
            atomic_write(os.path.join(self.directory, "committed"), lambda f: f.write(receipt.to_json().encode()))
            return receipt

    def close(self) -> None:
        """Close open files, the journal and the lock; the staging directory stays."""
        with self._lock:
            for handle in self._handles.values():
                if handle.node.fd is not None:
                    os.close(handle.node.fd)
                    handle.node.fd = None
            self._handles.clear()
            for fd in (self._journal, self._lockfile):
                with contextlib.suppress(OSError):  # closed by an earlier close()
                    os.close(fd)
            self._journal = self._lockfile = -1

    def discard(self) -> None:
        """Close, and remove the staging directory (after its tree is safely committed)."""
        self.close()
        shutil.rmtree(self.directory)

    def __enter__(self) -> "StagingTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
