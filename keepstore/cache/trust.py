"""Whether a cache directory (and a file in it) can only have been written by this user."""

from __future__ import annotations

import os
import stat

__all__ = ["file_is_private", "is_private_directory"]

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _owned_safely(st: os.stat_result, uid: int) -> bool:
    return st.st_uid in (uid, 0) and not st.st_mode & _OTHERS_WRITE


def is_private_directory(path: str, files: tuple[str, ...] = (), *, uid: int | None = None) -> bool:
    """True when only *uid* (default: this process's effective uid) or root could have written
    *path* or the named *files* in it, or could swap *path* for another directory.

    *path* must be owned by *uid* and writable by nobody else; so must each of *files* that
    exists. Each ancestor must be owned by *uid* or root and writable by nobody else, unless it
    is sticky (``/tmp``), where others cannot rename what is ours. Symlinks are followed, as
    opening the cache follows them. Any failure to look is an answer of False.
    """
    uid = os.geteuid() if uid is None else uid
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        if st.st_uid != uid or st.st_mode & _OTHERS_WRITE:
            return False
        for name in files:
            try:
                if not _owned_safely(os.stat(os.path.join(real, name)), uid):
                    return False
            except FileNotFoundError:
                continue  # not made yet (the WAL files come and go): what we make is ours
        parent = os.path.dirname(real)
        while True:
            pst = os.stat(parent)
            if pst.st_uid not in (uid, 0):
                return False
            if pst.st_mode & _OTHERS_WRITE and not pst.st_mode & stat.S_ISVTX:
                return False
            up = os.path.dirname(parent)
            if up == parent:
                return True
            parent = up
    except OSError:
        return False


def file_is_private(st: os.stat_result, *, uid: int | None = None) -> bool:
    """True when the file *st* describes is owned by *uid* (default: ours) and writable by nobody else."""
    uid = os.geteuid() if uid is None else uid
    return st.st_uid == uid and not st.st_mode & _OTHERS_WRITE
