"""Blocks: what `keep serve` does with its volumes (find, verify, write, list), apart from HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ..errors import WriteError
from ..locator import Locator
from .exchange import BodyAction, Refusal
from .volumes import Volume, VolumeFull, rank_volumes

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
    """A PUT's block is on these volumes."""

    locator: Locator
    volumes: tuple[Volume, ...]

    @property
    def confirmed(self) -> str:
        """``X-Keep-Storage-Classes-Confirmed``: each class with the volumes holding it."""
        counts: dict[str, int] = {}
        for volume in self.volumes:
            for cls in volume.classes:
                counts[cls] = counts.get(cls, 0) + 1
        return ", ".join(f"{c}={n}" for c, n in counts.items())


class Blocks:
    """The block operations of one server over its *volumes*."""

    def __init__(self, volumes: Sequence[Volume]) -> None:
        self.volumes = list(volumes)

    def find(self, md5: str, size: int | None) -> Found | None:
        """The first volume holding *md5* (with *size*, when given)."""
        for volume in self.volumes:
            path = volume.store.find(md5)
            if path is None:
                continue
            try:
                actual = path.stat().st_size
            except FileNotFoundError:  # removed since find()
                continue
            if size is None or actual == size:
                return Found(volume, path, actual)
        return None

    def keep_existing(self, found: Found, md5: str, body: Iterable[bytes]) -> Stored | Refusal:
        """A PUT of a block *found* intact: check the body too, and touch the copy."""
        digest = hashlib.md5()
        for chunk in body:
            digest.update(chunk)
        if digest.hexdigest() != md5:
            return Refusal(400, "body md5 does not match the block name")
        with contextlib.suppress(OSError):  # a touch is only a hint for trash/GC policies
            os.utime(found.path)
        return Stored(Locator(md5, found.size), (found.volume,))

    def write_new(self, md5: str, length: int, body: Iterable[bytes], classes: Sequence[str]) -> Stored | Refusal:
        """Write the body to the best volume that has room (507 when none has)."""
        for volume in rank_volumes(md5, self.volumes, classes or ["default"]):
            try:
                volume.reserve(length)
            except VolumeFull:
                continue
            loc: Locator | Refusal | None = None
            try:
                loc = _write(volume, md5, body)
            finally:
                volume.release(length, stored=isinstance(loc, Locator), md5=md5)
            return Stored(loc, (volume,)) if isinstance(loc, Locator) else loc
        return Refusal(507, "every volume is full")

    def index(self, prefix: str) -> bytes:
        """``/index`` text: ``<md5>+<size> <mtime ns>`` lines, each block once, then an empty line."""
        seen: set[str] = set()
        lines = []
        for volume in self.volumes:
            for md5, size, mtime_ns in volume.store.index(prefix):
                if md5 not in seen:
                    seen.add(md5)
                    lines.append(f"{md5}+{size} {mtime_ns}\n")
        lines.append("\n")
        return "".join(lines).encode()


def _write(volume: Volume, md5: str, body: Iterable[bytes]) -> Locator | Refusal:
    """The stored block's locator, or the refusal to answer (nothing is left behind)."""
    try:
        mismatch = False
        with volume.store.writer(md5) as writer:
            for chunk in body:
                writer.write(chunk)
            try:
                loc = writer.commit()
            except WriteError:
                mismatch = True
        if mismatch:  # answered only once the writer has removed its temp file
            return Refusal(400, "body md5 does not match the block name")
    except OSError as exc:
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            raise  # the client's side failed, not the volume
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Refusal(507, "volume full", BodyAction.CLOSE)
        log.error("writing %s to %s: %s", md5, volume.path, exc.strerror or exc)
        return Refusal(500, "volume write error", BodyAction.CLOSE)
    return loc


def intact(path: Path, md5: str) -> bool:
    """Whether the file at *path* hashes to *md5* (read in pieces; False if it cannot be read)."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == md5


def verified_chunks(f: BinaryIO, md5: str, size: int) -> Iterator[bytes]:
    """The file's chunks, the last held back until the whole file hashes to *md5* and has
    *size* bytes: a damaged copy ends in `BlockDamaged` before its last byte is sent."""
    digest = hashlib.md5()
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
        yield held
