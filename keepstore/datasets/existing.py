"""What `keep get` does with files already at the destination: refuse, overwrite, keep by size, or keep verified."""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from typing import TYPE_CHECKING, BinaryIO

from ..errors import KeepError
from ..locator import Locator
from .manifest import Manifest, ManifestFile, Segment

if TYPE_CHECKING:
    from .reader import BlockSource

__all__ = ["ExistingFileError", "ExistingPolicy", "file_matches", "keep_existing", "plan_extract"]

_CHUNK = 8 << 20


class ExistingFileError(KeepError):
    """A file (or directory) at the destination that the chosen policy will not replace."""


class ExistingPolicy(enum.Enum):
    """What to do with a destination file that already exists.

    ``REFUSE`` (the default) stops before anything is written; ``FORCE`` replaces it;
    ``SKIP`` keeps it when its size matches (else replaces it); ``VERIFY`` keeps it only when
    its size and content match the dataset's blocks (else replaces it).
    """

    REFUSE = "refuse"
    FORCE = "force"
    SKIP = "skip-existing"
    VERIFY = "verify-existing"

    @classmethod
    def from_flags(cls, *, force: bool = False, skip_existing: bool = False,
                   verify_existing: bool = False) -> "ExistingPolicy":
        if force + skip_existing + verify_existing > 1:
            raise KeepError("choose one of --force, --skip-existing and --verify-existing")
        if force:
            return cls.FORCE
        if verify_existing:
            return cls.VERIFY
        if skip_existing:
            return cls.SKIP
        return cls.REFUSE


def _refusal(target: str) -> ExistingFileError:
    return ExistingFileError(f"{target} already exists; nothing was written (--force overwrites, "
                             f"--skip-existing keeps files of the right size, --verify-existing keeps "
                             f"files whose content matches)")


def file_matches(target: str, mf: ManifestFile, blocks: "BlockSource | None") -> bool:
    """True when the local file *target* holds exactly the bytes of *mf*.

    Each segment that is a whole block is checked by hashing the local bytes against the
    block's md5: nothing is fetched. A segment that is part of a block (small files packed
    together) can only be compared with the block's bytes, so that block is fetched through
    *blocks* (once, however many files share it); without *blocks* such a file does not match.
    """
    try:
        f = open(target, "rb")  # noqa: SIM115 - closed by the with below
    except OSError:  # unreadable: it cannot be shown to match, so it will be replaced
        return False
    with f:
        if os.fstat(f.fileno()).st_size != mf.size:
            return False
        len(mf.segments)  # loads a parsed file's ranges (FileSegments.overlapping assumes them loaded)
        for _i, at, seg in mf.segments_in(0, mf.size):
            f.seek(at)
            whole = seg.offset == 0 and seg.length == seg.locator.size
            if whole:
                if not _md5_matches(f, seg):
                    return False
                continue
            if blocks is None:
                return False
            data = blocks.block(seg.locator)
            with memoryview(data) as view:
                if not _bytes_match(f, view[seg.offset:seg.offset + seg.length]):
                    return False
    return True


def _md5_matches(f: BinaryIO, seg: Segment) -> bool:
    digest = hashlib.md5(usedforsecurity=False)
    left = seg.length
    while left:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            return False
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest() == seg.locator.md5


def _bytes_match(f: BinaryIO, expected: memoryview) -> bool:
    done = 0
    while done < len(expected):
        chunk = f.read(min(len(expected) - done, _CHUNK))
        if not chunk or chunk != expected[done:done + len(chunk)]:
            return False
        done += len(chunk)
    return True


def keep_existing(target: str, mf: ManifestFile, policy: ExistingPolicy,
                  blocks: "BlockSource | None" = None) -> bool:
    """Decide for one destination file: True keeps the file that is there (write nothing),
    False writes it; `ExistingFileError` when the policy refuses."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise ExistingFileError(f"{target} is a directory where the dataset has a file; nothing was written")
    if policy is ExistingPolicy.REFUSE:
        raise _refusal(target)
    if policy is ExistingPolicy.FORCE or not stat.S_ISREG(st.st_mode):
        return False  # replaced (a symbolic link or other non-file is replaced, not followed)
    if st.st_size != mf.size:
        return False
    return policy is ExistingPolicy.SKIP or file_matches(target, mf, blocks)


def block_file(locator: Locator) -> ManifestFile:
    """A plain block seen as a one-segment file (so a block written to a file is checked alike)."""
    return ManifestFile(locator.md5, (Segment(locator, 0, locator.size),))


def plan_extract(manifest: Manifest, dest: str | os.PathLike[str], policy: ExistingPolicy,
                 blocks: "BlockSource | None" = None) -> frozenset[str]:
    """Check every target of extracting *manifest* under *dest* before anything is written.

    Returns the dataset paths whose existing files are kept (for ``extract(skip=...)``). Raises
    `ExistingFileError` naming the first conflict in path order: with ``REFUSE`` any existing
    file; with every policy a directory where a file goes or a non-directory where a directory
    goes (neither is ever replaced).
    """
    root = os.path.abspath(os.fspath(dest))
    for d in sorted(manifest.directories):
        target = os.path.join(root, d)
        if os.path.lexists(target) and not os.path.isdir(target):
            raise ExistingFileError(f"{target} exists and is not a directory, where the dataset has one; "
                                    f"nothing was written")
    keep = set()
    for mf in manifest.walk_files():
        target = os.path.join(root, mf.path)
        parent = os.path.dirname(target)
        if os.path.lexists(parent) and not os.path.isdir(parent):
            raise ExistingFileError(f"{parent} exists and is not a directory; nothing was written")
        if keep_existing(target, mf, policy, blocks):
            keep.add(mf.path)
    return frozenset(keep)
