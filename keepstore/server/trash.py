"""Trash and quarantine on `keep serve` volumes: renames beside the block, as keepstore's unix volumes do."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from ..locator import DEFAULT_SIGNING_TTL

__all__ = ["DEFAULT_TRASH_LIFETIME", "Outcome", "TrashPolicy", "Trashed", "check_file", "empty_trash", "list_trash",
           "quarantine_file", "trash_file", "untrash_block"]

DEFAULT_TRASH_LIFETIME = 14 * 86400  # Arvados' BlobTrashLifetime default (336h)

# <root>/<md5[:3]>/<md5>.trash.<deadline unix s>: the name keepstore's unix volumes use, so a
# volume directory handed to Arvados keepstore empties the same way. Quarantined copies are
# <md5>.quarantine.<unix s>, kept until an operator removes them. Neither name matches a block
# name, so neither is served, listed in /index, nor found by a LocalStore on the directory.
_TRASHED = re.compile(r"([0-9a-f]{32})\.trash\.([0-9]{1,12})\Z")
_PREFIX = re.compile(r"[0-9a-f]{3}\Z")


@dataclasses.dataclass(frozen=True)
class TrashPolicy:
    """How a server trashes blocks.

    *lifetime*: seconds a trashed block stays recoverable with ``PUT /untrash/<locator>``
    before the trash is emptied (0: a DELETE removes the block at once, as Arvados'
    ``BlobTrashLifetime: 0``). *min_age*: a block written or touched less than this many
    seconds ago is kept by a DELETE, which still answers 200 (as keepstore 3.x does with
    ``BlobSigningTTL``: signatures given out for it may still be in use). *check_interval*:
    seconds between two passes that empty expired trash.
    """

    lifetime: float = DEFAULT_TRASH_LIFETIME
    min_age: float = DEFAULT_SIGNING_TTL
    check_interval: float = 3600.0

    def __post_init__(self) -> None:
        for name, value in (("lifetime", self.lifetime), ("min age", self.min_age)):
            if value < 0:
                raise ConfigError(f"trash {name} must be 0 or more seconds, got {value}")
        if self.check_interval <= 0:
            raise ConfigError(f"trash check interval must be positive, got {self.check_interval}")


class Outcome(enum.Enum):
    """What a DELETE did to one copy."""

    TRASHED = "trashed"  # renamed to the trash, recoverable until its deadline
    DELETED = "deleted"  # removed at once (lifetime 0)
    YOUNG = "young"  # kept: written or touched within the policy's min_age
    MODIFIED = "modified"  # kept: changed after the request's If-Unmodified-Since
    ABSENT = "absent"  # not there (any more)

    @property
    def removed(self) -> bool:
        return self in (Outcome.TRASHED, Outcome.DELETED)


@dataclasses.dataclass(frozen=True)
class Trashed:
    """One trashed copy on a volume.

    Args:
        md5: The block's md5.
        size: Its size in bytes.
        deadline: Unix seconds after which the trash emptier removes it.
        path: The trashed file.
    """

    md5: str
    size: int
    deadline: int  # unix seconds after which the trash emptier removes it
    path: Path


def check_file(path: Path, policy: TrashPolicy, now: float, unmodified_since: int | None) -> Outcome | None:
    """Whether *path* may be trashed now: None when it may, else the outcome that keeps it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Outcome.ABSENT
    if unmodified_since is not None and int(st.st_mtime) > unmodified_since:  # HTTP dates have whole seconds
        return Outcome.MODIFIED
    if policy.min_age > 0 and now - st.st_mtime < policy.min_age:
        return Outcome.YOUNG
    return None


def trash_file(path: Path, md5: str, policy: TrashPolicy, now: float, *, fsync: bool) -> Outcome:
    """Move the block at *path* to the trash (one rename in its directory), or remove it when
    the lifetime is 0. The caller holds the block's lock and has run `check_file`."""
    try:
        if policy.lifetime == 0:
            os.unlink(path)
            outcome = Outcome.DELETED
        else:
            os.rename(path, path.with_name(f"{md5}.trash.{int(now + policy.lifetime)}"))
            outcome = Outcome.TRASHED
    except FileNotFoundError:  # removed meanwhile by hand: nothing left to trash
        return Outcome.ABSENT
    if fsync:
        _fsync_dir(path.parent)
    return outcome


def untrash_block(root: Path, md5: str, *, fsync: bool) -> bool:
    """Put the most recently trashed copy of *md5* on the volume at *root* back under its
    name (one rename) and touch it, so the next gc's grace period counts from now; True
    when one was restored. When the block was written again since, that copy stays (touched)."""
    copies = sorted((t for t in list_trash(root, md5[:3]) if t.md5 == md5), key=lambda t: t.deadline)
    final = root / md5[:3] / md5
    if copies and os.path.isfile(final):  # written again since: keep that copy (the trashed one may have rotted)
        with contextlib.suppress(FileNotFoundError):  # trashed again meanwhile: restored all the same below
            os.utime(final)
            return True
    for trashed in reversed(copies):
        try:
            os.rename(trashed.path, final)
        except FileNotFoundError:  # emptied meanwhile: try an older copy
            continue
        with contextlib.suppress(FileNotFoundError):  # removed by hand at once: restored all the same
            os.utime(final)
        if fsync:
            _fsync_dir(final.parent)
        return True
    return False


def list_trash(root: Path, prefix: str = "") -> Iterator[Trashed]:
    """Every trashed copy on the volume at *root* whose md5 starts with *prefix*."""
    try:
        top = sorted(os.listdir(root))
    except OSError:  # an unreadable volume is reported by the reads that need it
        return
    for name in top:
        if not (_PREFIX.match(name) and name.startswith(prefix[:3])):
            continue
        try:
            entries = sorted(os.listdir(root / name))
        except OSError:  # not a directory, or unreadable: nothing of ours in it
            continue
        for entry in entries:
            match = _TRASHED.match(entry)
            if match and match.group(1).startswith(prefix):
                path = root / name / entry
                try:
                    size = os.stat(path, follow_symlinks=False).st_size
                except FileNotFoundError:  # emptied or untrashed meanwhile
                    continue
                yield Trashed(match.group(1), size, int(match.group(2)), path)


def empty_trash(root: Path, now: float) -> tuple[int, int]:
    """Remove the trashed copies on the volume at *root* whose deadline has passed: (count, bytes)."""
    count = size = 0
    for trashed in list_trash(root):
        if trashed.deadline <= now:
            with contextlib.suppress(FileNotFoundError):  # untrashed or emptied meanwhile
                os.unlink(trashed.path)
                count += 1
                size += trashed.size
    return count, size


def quarantine_file(path: Path, md5: str, now: float, *, fsync: bool) -> Path | None:
    """Move a damaged copy aside (one rename in its directory); its new path, or None when it
    was gone already."""
    target = path.with_name(f"{md5}.quarantine.{int(now)}")
    try:
        os.rename(path, target)
    except FileNotFoundError:  # replaced or removed meanwhile
        return None
    if fsync:
        _fsync_dir(path.parent)
    return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
