"""Forged cache entries: a CRC-32 forgery is caught wherever someone else could have written it."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from keepstore import DiskBlockCache, KeepClient, Locator
from keepstore.cache.trust import is_private_directory
from keepstore.transport import MockTransport, Request, Response

KiB = 1024
OTHER_UID = 12345  # a user that is not us (tests may run as root, which can chown)


def _bit(data: bytes, i: int) -> bytes:
    flipped = bytearray(len(data))
    flipped[len(data) - 4 + i // 8] = 1 << (i % 8)
    return bytes(flipped)


def forge_crc32(wanted: bytes, target_crc: int) -> bytes:
    """*wanted* with its last 4 bytes changed so that its CRC-32 is *target_crc* (same size).

    CRC-32 is affine over GF(2): flipping bits of the last 4 bytes changes the CRC by the XOR
    of each bit's own effect, so a 32x32 linear system picks the bits to flip.
    """
    base = wanted[:-4] + b"\0\0\0\0"
    zero = bytes(len(base))
    effects = [zlib.crc32(_bit(base, i)) ^ zlib.crc32(zero) for i in range(32)]
    need = zlib.crc32(base) ^ target_crc
    rows = [(effects[i], 1 << i) for i in range(32)]  # (effect, which bits make it)
    basis: dict[int, tuple[int, int]] = {}
    for effect, bits in rows:
        for top in sorted(basis, reverse=True):
            if effect >> top & 1:
                effect ^= basis[top][0]
                bits ^= basis[top][1]
        if effect:
            basis[effect.bit_length() - 1] = (effect, bits)
    chosen = 0
    for top in sorted(basis, reverse=True):
        if need >> top & 1:
            need ^= basis[top][0]
            chosen ^= basis[top][1]
    assert need == 0, "CRC-32 is onto over 32 free bits"
    return base[:-4] + chosen.to_bytes(4, "little")  # bit i of the tail is _bit(i)


def test_the_forgery_helper_forges() -> None:
    good, other = os.urandom(100 * KiB), os.urandom(100 * KiB)
    forged = forge_crc32(other, zlib.crc32(good))
    assert zlib.crc32(forged) == zlib.crc32(good) and len(forged) == len(good) and forged != good


def _cached_block(path: Path, **options: object) -> tuple[Locator, bytes, Path]:
    """A 128 KiB block put into a cache at *path* (a file of its own); its file's path."""
    data = os.urandom(128 * KiB)
    loc = Locator.for_data(data)
    cache = DiskBlockCache(path, **options)  # type: ignore[arg-type]
    cache.put(loc, data)
    cache.close()
    (victim,) = sorted(path.rglob("*.val"))
    return loc, data, victim


def _forge(victim: Path, good: bytes) -> None:
    victim.write_bytes(forge_crc32(os.urandom(len(good)), zlib.crc32(good)))


def _network(data: bytes) -> tuple[MockTransport, list[Request]]:
    asked: list[Request] = []

    def serve(request: Request) -> Response:
        asked.append(request)
        return Response(200, body=data)

    return MockTransport(serve), asked


def test_a_private_directory_is_trusted_and_a_world_writable_one_is_not(tmp_path: Path) -> None:
    private = tmp_path / "private"
    assert DiskBlockCache(private).private and is_private_directory(str(private))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not DiskBlockCache(shared).private


def test_a_crc_forged_entry_in_a_world_writable_directory_is_not_returned_by_get(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    loc, data, victim = _cached_block(path)
    _forge(victim, data)
    transport, asked = _network(data)
    cache = DiskBlockCache(path)  # verify="auto", the default
    with KeepClient(["http://127.0.0.1:1"], transport=transport, cache=cache, close_cache=True) as kc:
        assert kc.get(loc) == data
    assert len(asked) == 1  # the forgery was refused and the block read from the network
    assert cache.stats().corrupt == 1


def test_a_forged_file_owned_by_another_user_is_md5_checked_in_a_private_directory(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    path = tmp_path / "private"
    loc, data, victim = _cached_block(path)
    _forge(victim, data)
    os.chown(victim, OTHER_UID, OTHER_UID)
    cache = DiskBlockCache(path)
    assert cache.private and cache.get(loc) is None and cache.stats().corrupt == 1


def test_a_group_writable_block_file_is_md5_checked(tmp_path: Path) -> None:
    path = tmp_path / "private"
    loc, data, victim = _cached_block(path)
    _forge(victim, data)
    victim.chmod(0o664)
    assert DiskBlockCache(path).get(loc) is None


def test_verify_crc32_trusts_the_directory_as_documented(tmp_path: Path) -> None:
    """The threat model (docs/cache.md): crc32 catches accidents only; a same-user forger wins."""
    path = tmp_path / "private"
    loc, data, victim = _cached_block(path, verify="crc32")
    _forge(victim, data)
    assert DiskBlockCache(path, verify="crc32").get(loc) not in (None, data)


def test_hits_in_a_private_directory_keep_the_crc32_path(tmp_path: Path) -> None:
    """Hit rate: a private directory's hits are checked by the recorded checksum (CRC-32 for an
    entry written with verify="crc32"), not md5."""
    path = tmp_path / "private"
    loc, data, victim = _cached_block(path, verify="crc32")
    cache = DiskBlockCache(path)
    assert cache.private and cache.get(loc) == data and cache.stats().hits == 1
    _forge(victim, data)  # only a same-user writer can do this, and it could rewrite us anyway
    assert cache.get(loc) not in (None, data)  # shows the check is CRC-32, not md5


def test_an_ancestor_writable_by_others_without_the_sticky_bit_is_not_private(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)  # others could rename our directory away and put theirs in its place
    assert not DiskBlockCache(parent / "cache").private
    parent.chmod(0o1777)  # sticky, as /tmp: they cannot
    assert DiskBlockCache(parent / "cache").private
