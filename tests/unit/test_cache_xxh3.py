"""Disk-cache hits checked by XXH3-128: the default for private directories, still catching damage."""

from __future__ import annotations

import os
from pathlib import Path

import diskcache
import pytest
import xxhash

from keepstore import DiskBlockCache, Locator
from keepstore.errors import ConfigError

KiB = 1024


def _entry(path: Path, **options: object) -> tuple[Locator, bytes, Path]:
    """A 256 KiB block (a file of its own) stored in a cache at *path*; its file."""
    data = os.urandom(256 * KiB)
    loc = Locator.for_data(data)
    with DiskBlockCache(path, **options) as cache:  # type: ignore[arg-type]
        cache.put(loc, data)
    (victim,) = sorted(path.rglob("*.val"))
    return loc, data, victim


def _tag(path: Path, loc: Locator) -> str:
    raw = diskcache.Cache(str(path))
    try:
        _, tag = raw.get(str(loc), read=True, tag=True)
        return str(tag)
    finally:
        raw.close()


def _set_tag(path: Path, loc: Locator, value: bytes, tag: str) -> None:
    raw = diskcache.Cache(str(path))
    try:
        raw.set(str(loc), value, tag=tag)
    finally:
        raw.close()


@pytest.mark.parametrize("verify", ["auto", "xxh3"])
def test_new_entries_record_an_xxh3_128_checksum(tmp_path: Path, verify: str) -> None:
    path = tmp_path / "c"
    loc, data, _ = _entry(path, verify=verify)
    assert _tag(path, loc) == f"xxh3:{xxhash.xxh3_128_hexdigest(data)}:{loc}"


def test_a_flipped_bit_fails_the_xxh3_check_and_the_entry_is_refetched(tmp_path: Path) -> None:
    path = tmp_path / "c"
    loc, data, victim = _entry(path)
    damaged = bytearray(data)
    damaged[100_000] ^= 0x10
    victim.write_bytes(bytes(damaged))
    cache = DiskBlockCache(path)
    assert cache.private  # so the check is XXH3, not md5
    fetched: list[int] = []

    def fetch() -> bytes:
        fetched.append(1)
        return data

    assert cache.get_or_fetch(loc, fetch) == data
    stats = cache.stats()
    assert fetched == [1] and stats.corrupt == 1
    assert cache.get(loc) == data and cache.stats().hits == 1  # stored again, and served
    assert _tag(path, loc).startswith("xxh3:")
    cache.close()


def test_an_entry_whose_xxh3_matches_other_data_is_still_refused(tmp_path: Path) -> None:
    """The checksum is taken of what was read: a tag copied from another block proves nothing."""
    path = tmp_path / "c"
    loc, data, _ = _entry(path)
    other = os.urandom(len(data))
    _set_tag(path, loc, data[:-1] + b"\0", f"xxh3:{xxhash.xxh3_128_hexdigest(other)}:{loc}")
    with DiskBlockCache(path) as cache:
        assert cache.get(loc) is None and cache.stats().corrupt == 1


def test_a_private_directory_trusts_a_matching_xxh3_tag_without_md5(tmp_path: Path) -> None:
    """The threat model: in a private directory only this user could have forged the tag."""
    path = tmp_path / "c"
    loc, data, _ = _entry(path)
    forged = os.urandom(len(data))
    _set_tag(path, loc, forged, f"xxh3:{xxhash.xxh3_128_hexdigest(forged)}:{loc}")
    with DiskBlockCache(path) as cache:
        assert cache.private and cache.get(loc) == forged


def test_a_world_writable_directory_md5_checks_an_xxh3_tagged_entry(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    loc, data, _ = _entry(path)
    forged = os.urandom(len(data))
    _set_tag(path, loc, forged, f"xxh3:{xxhash.xxh3_128_hexdigest(forged)}:{loc}")
    with DiskBlockCache(path) as cache:
        assert not cache.private and cache.get(loc) is None and cache.stats().corrupt == 1
        cache.put(loc, data)
        assert cache.get(loc) == data


def test_entries_tagged_crc32_by_an_older_version_are_still_served(tmp_path: Path) -> None:
    path = tmp_path / "c"
    loc, data, _ = _entry(path, verify="crc32")
    assert _tag(path, loc).startswith("crc32:")
    with DiskBlockCache(path) as cache:  # auto: new entries xxh3, old ones checked by their CRC
        assert cache.get(loc) == data and cache.stats().corrupt == 0


def test_an_unknown_verify_method_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="xxh3"):
        DiskBlockCache(tmp_path / "c", verify="sha1")
