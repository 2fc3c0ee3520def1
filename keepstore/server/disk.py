"""Disk: how `keep serve` writes a block file crash-safely, through a file-system layer tests can replace."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import time
from pathlib import Path
from types import TracebackType

from ..errors import WriteError
from ..local import FileSystem, StrPath
from ..locator import MAX_BLOCK_SIZE, Locator

__all__ = ["TEMP_PREFIX", "FileOps", "VolumeWriter", "block_file", "reclaim_temp_files"]

TEMP_PREFIX = ".tmp-"
_OURS = ".tmp-keep-"  # our temp files: .tmp-keep-<pid>-<random>, flocked while their writer lives
TEMP_GRACE = 10.0  # a temp file younger than this may not be locked by its writer yet
FOREIGN_TEMP_AGE = 3600.0  # other writers' temp files (a LocalStore's) hold no lock: wait this long


def block_file(root: str, md5: str) -> str:
    """Where block *md5* is written in volume directory *root*: ``<root>/<md5[:3]>/<md5>``, the
    layout keepstore's unix volumes use (a string, not a `Path`: this is named on every request)."""
    return f"{root}/{md5[:3]}/{md5}"


class FileOps(FileSystem):
    """The file-system calls a block write makes, in one place so a test can record their
    order or drop what was not synced (a power cut). The durable steps (mkdir, fsync, replace,
    fsync_dir) are the LocalStore's `FileSystem`; a server write also creates, locks, writes and
    closes its temp file by descriptor."""

    def create(self, path: StrPath) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def lock(self, fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            while view:
                view = view[os.write(fd, view):]

    def close(self, fd: int) -> None:
        os.close(fd)

    def unlink(self, path: StrPath) -> None:
        with contextlib.suppress(FileNotFoundError):  # already renamed or reclaimed
            os.unlink(path)


class VolumeWriter:
    """Stream one block into a locked temp file beside its final name; `commit()` checks the
    md5 and makes the block durable in this order: the new prefix directory's entry (its
    parent synced), the file's data (fsync), the rename, the prefix directory (fsync). Only
    then may the PUT be acknowledged. Leaving without a commit removes the temp file.

    Args:
        root: The volume's directory.
        md5: The md5 the block must have.
        fsync: Make the block durable before `commit` returns.
        ops: The file-system layer writes go through.
    """

    def __init__(self, root: Path, md5: str, *, fsync: bool = True, ops: FileOps | None = None) -> None:
        self.ops = ops or FileOps()
        self.md5 = md5
        # Strings, not Paths (`final` and `temp` make those): this runs for every PUT.
        self.path = block_file(os.fspath(root), md5)  # the block's file, once committed
        directory = os.path.dirname(self.path)
        self._fsync = fsync
        self._hash = hashlib.md5(usedforsecurity=False)
        self.size = 0
        self._temp = f"{directory}/{_OURS}{os.getpid()}-{secrets.token_hex(8)}"
        try:
            # Most prefix directories exist: creating the file first saves a mkdir per PUT (a
            # system call, which lets go of the interpreter lock that 16 busy threads queue for).
            self._fd: int | None = self.ops.create(self._temp)
        except FileNotFoundError:
            if self.ops.mkdir(directory) and fsync:
                self.ops.fsync_dir(root)  # a new prefix directory must survive with the block in it
            self._fd = self.ops.create(self._temp)
        self.ops.lock(self._fd)  # held until close: reclaim_temp_files leaves a live writer's file

    @property
    def final(self) -> Path:
        """`path` as a `Path`."""
        return Path(self.path)

    @property
    def temp(self) -> Path:
        """The temp file being written (removed, or renamed onto `final`, when done)."""
        return Path(self._temp)

    def write(self, chunk: bytes | bytearray | memoryview, *, hashed: bool = False) -> None:
        """Append *chunk*; *hashed*: the caller hashes the body itself (once, for every volume
        taking a copy) and gives `commit` the digest, so this writer does not hash it again."""
        if self.size + len(chunk) > MAX_BLOCK_SIZE:
            raise WriteError(f"block {self.md5} exceeds the 64 MiB maximum", locator=self.md5)
        assert self._fd is not None
        if not hashed:
            self._hash.update(chunk)
        self.ops.write(self._fd, chunk)
        self.size += len(chunk)

    def commit(self, digest: str | None = None) -> Locator:
        """Check the md5 (*digest*, the caller's hash of what it wrote, or this writer's own),
        then make the block durable under its name."""
        actual = self._hash.hexdigest() if digest is None else digest
        if actual != self.md5:
            raise WriteError(f"data md5 {actual} does not match block name {self.md5}", locator=self.md5)
        assert self._fd is not None
        if self._fsync:
            self.ops.fsync(self._fd)
        self.ops.replace(self._temp, self.path)
        fd, self._fd = self._fd, None
        self.ops.close(fd)
        if self._fsync:
            self.ops.fsync_dir(os.path.dirname(self.path))
        return Locator(self.md5, self.size)

    def abort(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self.ops.close(fd)
            self.ops.unlink(self._temp)

    def __enter__(self) -> "VolumeWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


def reclaim_temp_files(root: Path, now: float | None = None) -> int:
    """Remove temp files that no live writer owns; return how many.

    Ours are flocked by their writer for as long as it lives, so one that can be locked was
    left by a killed process (kill -9 releases the lock), and goes at once when the pid in its
    name is gone, else after a short grace (a file its writer has not locked yet). Other temp
    files (a LocalStore's) go after an hour.
    Only real prefix directories are walked: a symlink to elsewhere is never followed.
    """
    now = time.time() if now is None else now
    count = 0
    try:
        top = list(os.scandir(root))
    except OSError:  # an unreadable volume is reported by the reads that need it
        return 0
    for entry in top:
        if len(entry.name) != 3 or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            inner = [e for e in os.scandir(entry.path) if e.name.startswith(TEMP_PREFIX)]
        except OSError:  # unreadable prefix directory: nothing we could remove either
            continue
        for temp in inner:
            if not temp.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):  # its writer committed or aborted meanwhile
                age = now - temp.stat(follow_symlinks=False).st_mtime
                if temp.name.startswith(_OURS) and (age >= TEMP_GRACE or _dead(temp.name)) and _unowned(temp.path):
                    count += 1
                elif not temp.name.startswith(_OURS) and age >= FOREIGN_TEMP_AGE:
                    os.unlink(temp.path)
                    count += 1
    return count


def _dead(name: str) -> bool:
    """Whether the process named in our temp file's name is gone (then no lock can be pending)."""
    pid = name[len(_OURS):].split("-", 1)[0]
    if not pid.isascii() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _unowned(path: str) -> bool:
    """Lock and remove *path* if no live writer holds its lock; True when removed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # a live writer's
            raise
        os.unlink(path)
        return True
    finally:
        os.close(fd)
