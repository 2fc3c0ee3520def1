"""Scrub: read every block on a server's volumes at a bounded rate and quarantine damaged copies."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable

from .blocks import READ_CHUNK, Blocks, Found

__all__ = ["ScrubReport", "Scrubber"]

log = logging.getLogger("keepstore.server")


@dataclasses.dataclass(frozen=True)
class ScrubReport:
    """One pass over every volume.

    Args:
        blocks: Copies read.
        bytes: Bytes read.
        quarantined: ``(volume path, md5)`` of each copy moved aside.
        unreadable: Copies that could not be opened or read (left alone, logged).
    """

    blocks: int  # copies read
    bytes: int
    quarantined: tuple[tuple[str, str], ...]  # (volume path, md5) moved aside
    unreadable: int = 0  # copies that could not be opened or read (left alone, logged)


class Scrubber:
    """Reads every block copy on *blocks*' volumes, hashing it, at most *rate* bytes/s on
    average over a pass (None: as fast as the disk goes). A copy whose bytes do not match its
    name is quarantined (`Blocks.quarantine`): no longer served or listed, so clients read
    another replica and ``keep repair`` puts a good copy back.

    *clock* (monotonic seconds) and *sleep* are injectable so a test can check the rate
    without waiting; the server passes its stop event's ``wait`` as *sleep* and its
    ``is_set`` as *stopping*, so stopping the server ends a pass early.
    """

    def __init__(self, blocks: Blocks, rate: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], object] = time.sleep,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"scrub rate must be positive bytes/s, got {rate}")
        self.blocks = blocks
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.stopping = stopping
        self._lock = threading.Lock()  # one pass at a time (the background job and a test's scrub_once)

    def scrub_once(self) -> ScrubReport:
        """One pass over every copy on every volume."""
        with self._lock:
            start, done = self.clock(), 0
            count = unreadable = 0
            quarantined: list[tuple[str, str]] = []

            def read(n: int) -> None:
                nonlocal done
                done += n
                self._throttle(start, done)

            for volume in self.blocks.volumes:
                for md5, _size, _mtime in list(volume.index()):
                    if self.stopping():
                        break
                    path = volume.find(md5)
                    if path is None:  # trashed or replaced since listed
                        continue
                    result = self._read(path, md5, read)
                    if result is None:
                        unreadable += 1
                        continue
                    inode, size, good = result
                    count += 1
                    if not good and self.blocks.quarantine(Found(volume, path, size), md5, inode):
                        quarantined.append((str(volume.path), md5))
            report = ScrubReport(count, done, tuple(quarantined), unreadable)
        if quarantined or unreadable:
            log.warning("scrub: %d copies (%d bytes) read, %d quarantined, %d unreadable", count, done,
                        len(quarantined), unreadable)
        return report

    def _read(self, path: os.PathLike[str], md5: str, read: Callable[[int], object]) -> tuple[int, int, bool] | None:
        """(inode, size, whether it hashes to *md5*) of the file at *path*; None when unreadable."""
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with open(path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                while chunk := f.read(READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    read(len(chunk))
        except FileNotFoundError:  # trashed or replaced since listed: not a damaged copy
            return None
        except OSError as exc:  # EIO, EACCES: logged; the read path reports it too
            log.warning("scrub: cannot read %s: %s", path, exc.strerror or exc)
            return None
        return inode, size, digest.hexdigest() == md5

    def _throttle(self, start: float, done: int) -> None:
        """Sleep until *done* bytes since *start* are within the rate."""
        if self.rate is None:
            return
        ahead = done / self.rate - (self.clock() - start)
        if ahead > 0:
            self.sleep(ahead)
