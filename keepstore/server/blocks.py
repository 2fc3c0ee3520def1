"""Blocks: what `keep serve` does with its volumes (find, verify, write, list), apart from HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..errors import WriteError
from ..locator import Locator
from .disk import VolumeWriter
from .exchange import BodyAction, Refusal
from .hashing import BodyHasher
from .locks import BlockLock, BlockLocks
from .trash import Outcome, TrashPolicy, check_file, empty_trash, quarantine_file, trash_file, untrash_block
from .verified import FileKey, VerifiedFiles, file_key
from .volumes import Volume, VolumeFull, rank_volumes
from .wire import SMALL_BODY

__all__ = ["BlockDamaged", "Blocks", "Found", "Stored", "verified_chunks"]

log = logging.getLogger("keepstore.server")

READ_CHUNK = 1 << 20  # read from disk (and hashed) this much at a time: with the piece held
# back below, a reader pins at most twice this much memory, however slowly it reads


class BlockDamaged(Exception):
    """A stored copy does not match its name (found while sending it)."""


class Found(NamedTuple):
    """Where a block is: its volume, its file and the file's size."""

    volume: Volume
    path: Path
    size: int


@dataclasses.dataclass(frozen=True)
class Stored:
    """A PUT's block is on these volumes.

    Args:
        locator: The block stored.
        volumes: The volumes that hold it now.
    """

    locator: Locator
    volumes: tuple[Volume, ...]

    @property
    def confirmed(self) -> str:
        """``X-Keep-Storage-Classes-Confirmed``: each class with the volumes holding it, by name."""
        counts: dict[str, int] = {}
        for volume in self.volumes:
            for cls in volume.classes:
                counts[cls] = counts.get(cls, 0) + 1
        return ", ".join(f"{c}={n}" for c, n in sorted(counts.items()))


class Blocks:
    """The block operations of one server over its *volumes*.

    Everything that renames or touches a block file (a write's commit, the touch of a copy a
    PUT found, trash, untrash, quarantine) holds that block's lock, so a DELETE never trashes
    a copy that a concurrent PUT has just confirmed, and a scrub never moves aside a good copy
    that replaced the damaged one it read. *clock* gives the time (unix seconds) for trash
    ages and deadlines. *hasher* makes the `BodyHasher` of each PUT's body (one per body,
    whatever the number of volumes taking a copy).
    """

    def __init__(self, volumes: Sequence[Volume], trash: TrashPolicy | None = None,
                 clock: Callable[[], float] = time.time, shared_locks: Path | None = None,
                 hasher: Callable[[], BodyHasher] = BodyHasher) -> None:
        self.volumes = list(volumes)
        self.hasher = hasher
        self.trash_policy = trash or TrashPolicy()
        self.clock = clock
        self._locks = BlockLocks(shared_locks)  # shared: worker processes exclude each other too
        self.verified = VerifiedFiles()  # files that hashed to their names, sent unread while unchanged

    def lock(self, md5: str) -> BlockLock:
        """The lock of block *md5* (striped: one of 256, by its first two hex digits)."""
        return self._locks(md5)

    def find(self, md5: str, size: int | None) -> Found | None:
        """The first volume holding *md5* (with *size*, when given)."""
        return next(iter(self.locate(md5, size)), None)

    def locate(self, md5: str, size: int | None) -> list[Found]:
        """Every volume's copy of *md5* (with *size*, when given), in volume order."""
        found = []
        for volume in self.volumes:
            path = volume.find(md5)
            if path is None:
                continue
            try:
                actual = path.stat().st_size
            except FileNotFoundError:  # removed since find()
                continue
            except OSError as exc:  # unreadable: another volume may have a good copy
                log.warning("volume %s: cannot stat block %s: %s", volume.path, md5, exc.strerror or exc)
                continue
            if size is None or actual == size:
                found.append(Found(volume, path, actual))
        return found

    def copies(self, md5: str, size: int) -> list[Found]:
        """Every volume's copy of *md5* with *size* bytes that hashes to its name."""
        found = []
        for volume in self.volumes:
            path = volume.find(md5)
            if path is None:
                continue
            if _size(path) == size and intact(path, md5):
                found.append(Found(volume, path, size))
            else:  # damaged on disk: this PUT writes a good copy (as keepstore does)
                log.warning("block %s at %s does not match its name; rewriting it from the PUT", md5, path)
        return found

    def store(self, md5: str, length: int, body: Iterable[bytes | memoryview], classes: Sequence[str],
              refuse_new: Callable[[], bool] = lambda: False) -> Stored | Refusal:
        """A PUT: one copy on a volume of each wanted class (any volume, preferring ``default``,
        when none is named), counting intact copies already stored. A class no volume has is
        not confirmed; when none of the wanted classes exists, 507 and nothing is stored.
        *refuse_new* is asked before a new copy is written (an injected "full")."""
        existing = self._touch_present(md5, self.copies(md5, length))
        wanted = list(dict.fromkeys(classes))
        if wanted and not any(set(wanted) & set(v.classes) for v in self.volumes):
            return Refusal(507, f"no volume has storage class {', '.join(wanted)}")
        missing = set(wanted) - {c for f in existing for c in f.volume.classes}
        if existing and not missing:
            return self._keep(existing, md5, body)
        if refuse_new():
            return Refusal(507, "every volume is full")
        def targets() -> list[Volume]:
            return self._targets(md5, length, wanted or ["default"], missing if wanted else None,
                                 {f.volume.path for f in existing})

        chosen = targets()
        if not chosen:  # dead writers' temp files may hold the space: reclaim them and look again
            reclaimed: int = sum(v.reclaim() for v in self.volumes)
            chosen = targets() if reclaimed else []
        if not chosen:
            return Refusal(507, "every volume is full")
        result: Stored | Refusal | None = None
        try:
            result = _write(chosen, md5, length, body, self.lock(md5), self.verified.add, self.hasher())
        finally:
            done = result.volumes if isinstance(result, Stored) else ()
            for volume in chosen:
                volume.release(length, stored=any(v is volume for v in done), md5=md5)
        if isinstance(result, Refusal):
            return result
        _touch(existing)
        return Stored(result.locator, tuple(f.volume for f in existing) + result.volumes)

    def _keep(self, existing: list[Found], md5: str, body: Iterable[bytes | memoryview]) -> Stored | Refusal:
        """Copies already stored: check the body against the name too, and touch them."""
        with self.hasher() as hasher:
            for _ in hasher.chunks(body):
                pass
            if hasher.hexdigest() != md5:
                return Refusal(400, "body md5 does not match the block name")
        return Stored(Locator(md5, existing[0].size), tuple(f.volume for f in existing))

    def _touch_present(self, md5: str, copies: list[Found]) -> list[Found]:
        """Touch the copies found, under the block's lock; those still there (a DELETE may
        have trashed one since it was found: then this PUT writes a new copy)."""
        present = []
        with self.lock(md5):
            for found in copies:
                try:
                    os.utime(found.path)
                except FileNotFoundError:  # trashed or quarantined since found
                    continue
                except OSError as exc:  # read-only file system: the copy stands, untouched
                    log.warning("volume %s: cannot touch block %s: %s", found.volume.path, md5, exc.strerror or exc)
                present.append(found)
        return present

    # -- trash ------------------------------------------------------------------------------

    def trash(self, md5: str, size: int | None, unmodified_since: int | None = None) -> list[Outcome]:
        """A DELETE: trash every copy of *md5* (with *size*, when given) older than the
        policy's min_age, unless one changed after *unmodified_since* (unix s): then none.
        One outcome per copy found (none found: an empty list)."""
        policy, now = self.trash_policy, self.clock()
        with self.lock(md5):
            copies = self.locate(md5, size)
            held = [check_file(f.path, policy, now, unmodified_since) for f in copies]
            if Outcome.MODIFIED in held:
                return [h or Outcome.MODIFIED for h in held]
            outcomes = []
            for found, keep in zip(copies, held, strict=True):
                outcome = keep or trash_file(found.path, md5, policy, now, fsync=found.volume.fsync)
                if outcome.removed:
                    found.volume.forget(md5)
                    self.verified.forget(found.path)
                    log.info("volume %s: %s block %s", found.volume.path, outcome.value, md5)
                outcomes.append(outcome)
            return outcomes

    def untrash(self, md5: str) -> int:
        """``PUT /untrash``: restore the latest trashed copy of *md5* on each volume; how many."""
        with self.lock(md5):
            restored = [v for v in self.volumes if untrash_block(v.path, md5, fsync=v.fsync)]
        for volume in restored:
            volume.remember(md5)
            log.info("volume %s: untrashed block %s", volume.path, md5)
        return len(restored)

    def empty_trash(self) -> int:
        """Remove every trashed copy past its deadline, on every volume; how many."""
        now, total = self.clock(), 0
        for volume in self.volumes:
            count, size = empty_trash(volume.path, now)
            if count:
                log.info("volume %s: emptied %d trashed block(s), %d bytes", volume.path, count, size)
            total += count
        return total

    def quarantine(self, found: Found, md5: str, inode: int) -> bool:
        """Move aside the copy at *found* that was read damaged, if it is still the file that
        was read (*inode*): a PUT may have replaced it with a good copy meanwhile."""
        with self.lock(md5):
            try:
                if os.stat(found.path).st_ino != inode:
                    return False
            except FileNotFoundError:  # trashed or removed meanwhile
                return False
            target = quarantine_file(found.path, md5, self.clock(), fsync=found.volume.fsync)
            self.verified.forget(found.path)
        if target is None:
            return False
        found.volume.forget(md5)
        log.error("volume %s: block %s does not match its name; quarantined as %s", found.volume.path, md5, target)
        return True

    def _targets(self, md5: str, length: int, ranking: list[str], missing: set[str] | None,
                 skip: set[Path]) -> list[Volume]:
        """Volumes to write, space reserved on each: one with room (*missing* None), or enough
        to cover every class in *missing*."""
        chosen: list[Volume] = []
        left = set(missing or ())
        for volume in rank_volumes(md5, self.volumes, ranking):
            if volume.path in skip or (missing is not None and not left & set(volume.classes)):
                continue
            try:
                volume.reserve(length)
            except VolumeFull:
                continue
            chosen.append(volume)
            left -= set(volume.classes)
            if missing is None or not left:
                break
        return chosen

    def index(self, prefix: str) -> bytes:
        """``/index`` text: ``<md5>+<size> <mtime ns>`` lines, each block once, then an empty line."""
        seen: set[str] = set()
        lines = []
        for volume in self.volumes:
            for md5, size, mtime_ns in volume.index(prefix):
                if md5 not in seen:
                    seen.add(md5)
                    lines.append(f"{md5}+{size} {mtime_ns}\n")
        lines.append("\n")
        return "".join(lines).encode()


def _write(volumes: list[Volume], md5: str, length: int, body: Iterable[bytes | memoryview], lock: BlockLock,
           verified: Callable[[str, FileKey, bytes | None], None], hasher: BodyHasher) -> Stored | Refusal:
    """Stream the *length*-byte body to every volume at once; the volumes that took it whole,
    or the refusal to answer (nothing partial is left behind on any volume). The body is hashed
    once for all volumes (`BodyHasher`: on a second thread, overlapping the reads and writes,
    for a body of several chunks). Each new copy is *verified* with the key it has once renamed
    into place: its bytes are the body that hashed to its name, so the first GET after a PUT is
    sent unread too, and a small block's bytes (up to `SMALL_BODY`) are handed over to be kept,
    so that GET is answered from memory, as the next ones are."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(hasher)  # entered first, so left last: its thread is joined after the writers abort
        writers: list[tuple[Volume, VolumeWriter]] = []
        failed: list[tuple[Volume, OSError]] = []
        for volume in volumes:
            try:
                writers.append((volume, stack.enter_context(volume.writer(md5))))
            except OSError as exc:
                failed.append((volume, exc))
        pieces: list[bytes] | None = [] if length <= SMALL_BODY else None
        for chunk in hasher.chunks(body):
            if pieces is not None:
                pieces.append(bytes(chunk))  # (kept as bytes: a chunk is a view of a buffer read into again)
            for volume, writer in list(writers):
                try:
                    writer.write(chunk, hashed=True)
                except OSError as exc:  # this volume failed: the others carry on
                    failed.append((volume, exc))
                    writers.remove((volume, writer))
                    writer.abort()
        digest = hasher.hexdigest()
        data = b"".join(pieces) if pieces is not None else None  # (one piece: that piece, uncopied)
        stored: list[Volume] = []
        loc: Locator | None = None
        for volume, writer in writers:
            try:
                with lock:
                    loc = writer.commit(digest)
                    with contextlib.suppress(OSError):  # gone already: the next GET hashes whatever is there
                        verified(writer.path, file_key(os.stat(writer.path)), data)  # as open_copy names it
                stored.append(volume)
            except WriteError:  # the body does not match the name: no writer commits
                return Refusal(400, "body md5 does not match the block name")
            except OSError as exc:
                failed.append((volume, exc))
    for volume, error in failed:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.error("writing %s to %s: %s", md5, volume.path, error.strerror or error)
    if loc is not None:
        return Stored(loc, tuple(stored))
    first = failed[0][1]
    if first.errno in (errno.ENOSPC, errno.EDQUOT):
        return Refusal(507, "volume full", BodyAction.CLOSE)
    return Refusal(500, "volume write error", BodyAction.CLOSE)


def _touch(copies: list[Found]) -> None:
    for found in copies:
        with contextlib.suppress(OSError):  # a touch is only a hint for trash/GC policies
            os.utime(found.path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed meanwhile
        return -1


def intact(path: Path, md5: str) -> bool:
    """Whether the file at *path* hashes to *md5* (read in pieces; False if it cannot be read)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == md5


def verified_chunks(f: BinaryIO, md5: str, size: int, on_verified: Callable[[], object] = lambda: None,
                    ) -> Iterator[bytes]:
    """The file's chunks, the last held back until the whole file hashes to *md5* and has
    *size* bytes: a damaged copy ends in `BlockDamaged` before its last byte is sent, a good
    one calls *on_verified* before its last chunk is given out. (Hashing on a second thread,
    to overlap sending, measured slower on two busy cores: see docs/performance.md.)"""
    digest = hashlib.md5(usedforsecurity=False)
    held: bytes | None = None
    offset = 0
    while chunk := f.read(READ_CHUNK):
        digest.update(chunk)
        offset += len(chunk)
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        if offset != size or digest.hexdigest() != md5:
            raise BlockDamaged(f"block {md5} does not match its locator")
        on_verified()
        yield held
