"""Cache hits as read-only views: a disk hit maps its verified block file, safely, and frees it when released."""

from __future__ import annotations

import gc
import mmap
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import diskcache
import pytest

from keepstore import DiskBlockCache, Locator
from keepstore.cache import BlockCache, MemoryBlockCache, TieredBlockCache
from keepstore.cache.index import BlockIndex
from keepstore.testing import wait_until

KiB = 1024
MiB = 1024 * KiB


def _block(n: int, size: int = 256 * KiB) -> tuple[Locator, bytes]:
    data = n.to_bytes(4, "big") + os.urandom(size - 4)
    return Locator.for_data(data), data


def _files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.val"))


def _open_fds() -> int:
    gc.collect()  # views left in garbage by earlier tests would be counted
    return len(os.listdir("/proc/self/fd"))


def _flip(victim: Path, offset: int) -> None:
    with open(victim, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("verify", ["auto", "xxh3", "crc32", "md5"])
def test_a_disk_hit_is_a_read_only_mapping_of_the_block(tmp_path: Path, verify: str) -> None:
    loc, data = _block(1, MiB)
    with DiskBlockCache(tmp_path / "c", 16 * MiB, verify=verify) as cache:
        cache.put(loc, data)
        view = cache.get_view(loc)
        assert view is not None
        assert view == data and view.readonly
        assert isinstance(view.obj, mmap.mmap)  # the file itself, not a copy
        assert cache.stats().hits == 1 and cache.stats().bytes_read == MiB


@pytest.mark.parametrize("kind", ["memory", "tiered", "inline"])
def test_other_hits_are_read_only_views_of_the_same_bytes(tmp_path: Path, kind: str) -> None:
    loc, data = _block(2, 1000 if kind == "inline" else 256 * KiB)
    cache: BlockCache
    if kind == "memory":
        cache = MemoryBlockCache(MiB)
    elif kind == "tiered":
        cache = TieredBlockCache(MemoryBlockCache(MiB), DiskBlockCache(tmp_path / "c", MiB))
    else:
        cache = DiskBlockCache(tmp_path / "c", MiB)  # a small block lives inside the database
    with cache:
        cache.put(loc, data)
        view = cache.get_view(loc)
        assert view is not None and view == data and view.readonly
        assert cache.get_view(_block(3)[0]) is None
        assert cache.stats().hits == 1 and cache.stats().misses == 1


def test_a_tiered_disk_hit_is_promoted_and_then_served_from_memory(tmp_path: Path) -> None:
    loc, data = _block(4, MiB)
    with DiskBlockCache(tmp_path / "c", 16 * MiB) as disk:
        disk.put(loc, data)
    tiered = TieredBlockCache(MemoryBlockCache(16 * MiB), DiskBlockCache(tmp_path / "c", 16 * MiB))
    first = tiered.get_view(loc)
    assert first is not None and isinstance(first.obj, mmap.mmap) and first == data
    second = tiered.get_view(loc)
    assert second is not None and isinstance(second.obj, bytes) and second == data
    assert tiered.disk.stats().hits == 1 and tiered.memory.stats().hits == 1
    tiered.close()


@pytest.mark.parametrize("verify", ["auto", "xxh3", "md5"])
def test_a_flipped_byte_on_disk_is_never_returned_as_a_view(tmp_path: Path, verify: str) -> None:
    path = tmp_path / "c"
    loc, data = _block(5, MiB)
    cache = DiskBlockCache(path, 16 * MiB, verify=verify)
    cache.put(loc, data)
    (victim,) = _files(path)
    _flip(victim, 777_777)
    assert cache.get_view(_block(99)[0]) is None  # the index connection is opened once, on first use
    before = _open_fds()
    assert cache.get_view(loc) is None
    assert _open_fds() == before  # the refused mapping is gone
    assert cache.stats().corrupt == 1 and _files(path) == []
    fetched: list[int] = []

    def fetch() -> bytes:
        fetched.append(1)
        return data

    view = cache.get_or_fetch_view(loc, fetch)
    assert view == data and fetched == [1]
    again = cache.get_view(loc)
    assert again is not None and again == data and isinstance(again.obj, mmap.mmap)
    cache.close()


def test_a_truncated_file_is_refused_without_mapping_it(tmp_path: Path) -> None:
    path = tmp_path / "c"
    loc, data = _block(6, MiB)
    cache = DiskBlockCache(path, 16 * MiB)
    cache.put(loc, data)
    (victim,) = _files(path)
    os.truncate(victim, MiB // 2)
    assert cache.get_view(loc) is None
    assert cache.stats().corrupt == 1


def test_a_view_keeps_its_bytes_after_its_entry_is_evicted(tmp_path: Path) -> None:
    path = tmp_path / "c"
    cache = DiskBlockCache(path, 2 * MiB + 512 * KiB)
    loc, data = _block(7, MiB)
    cache.put(loc, data)
    view = cache.get_view(loc)
    assert view is not None
    for n in range(8, 12):
        cache.put(*_block(n, MiB))  # loc is the least recently used: evicted first
    assert cache.get(loc) is None and cache.stats().evictions >= 3
    assert view == data
    cache.close()


@pytest.mark.parametrize("how", ["directory removed", "diskcache clear", "entry replaced"])
def test_a_view_keeps_its_bytes_when_the_cache_is_cleared(tmp_path: Path, how: str) -> None:
    path = tmp_path / "c"
    loc, data = _block(12, MiB)
    cache = DiskBlockCache(path, 16 * MiB)
    cache.put(loc, data)
    view = cache.get_view(loc)
    assert view is not None
    (original,) = _files(path)
    if how == "directory removed":
        cache.close()
        shutil.rmtree(path)
    elif how == "diskcache clear":
        with diskcache.Cache(str(path)) as raw:
            raw.clear()
    else:  # another writer stores the block again: a new file, the old one unlinked
        cache.discard(loc)
        cache.put(loc, data)
        assert _files(path) != [original]
    assert not original.exists()
    assert view == data
    cache.close()


def test_released_views_leave_no_file_descriptor_open(tmp_path: Path) -> None:
    path = tmp_path / "c"
    blocks = [_block(n, 128 * KiB) for n in range(20, 30)]
    with DiskBlockCache(path, 16 * MiB) as cache:
        for loc, data in blocks:
            cache.put(loc, data)
        cache.get_view(blocks[0][0])  # the index connection is opened once, on first use
        before = _open_fds()
        views = [cache.get_view(loc) for loc, _ in blocks for _ in range(5)]
        assert all(v is not None and isinstance(v.obj, mmap.mmap) for v in views)
        assert before < _open_fds() <= before + len(views)  # a live mapping holds one descriptor
        for v in views:
            assert v is not None
            v.release()
        del views
        assert _open_fds() == before
        for loc, data in blocks:
            with cache.get_view(loc) as view:  # type: ignore[union-attr]
                assert view == data
        gc.collect()
        assert _open_fds() == before


def test_a_block_file_others_may_write_is_copied_not_mapped(tmp_path: Path) -> None:
    path = tmp_path / "c"
    loc, data = _block(31, MiB)
    cache = DiskBlockCache(path, 16 * MiB)
    cache.put(loc, data)
    (victim,) = _files(path)
    os.chmod(victim, 0o664)  # a group member could rewrite it under a mapping
    view = cache.get_view(loc)
    assert view is not None and view == data
    assert isinstance(view.obj, bytes)
    cache.close()


def test_a_row_naming_a_file_outside_the_cache_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "c"
    loc, data = _block(32, MiB)
    outside = tmp_path / "precious"
    outside.write_bytes(data)
    cache = DiskBlockCache(path, 16 * MiB)
    cache.put(loc, data)
    with sqlite3.connect(path / "cache.db") as db:
        db.execute("UPDATE Cache SET filename = ? WHERE key = ?", ("../precious", str(loc)))
    assert cache.get_view(loc) is None and cache.get(loc) is None
    cache.discard(loc)
    assert outside.read_bytes() == data
    cache.close()


def test_concurrent_views_and_evictions_only_ever_see_whole_blocks(tmp_path: Path) -> None:
    path = tmp_path / "c"
    cache = DiskBlockCache(path, 3 * MiB)  # room for about five of the eight blocks
    blocks = [_block(n, 512 * KiB) for n in range(40, 48)]
    for loc, data in blocks[:5]:
        cache.put(loc, data)
    stop, hit = threading.Event(), threading.Event()
    seen: list[int] = []
    wrong: list[str] = []

    def reader(offset: int) -> None:
        i = offset
        while not stop.is_set():
            loc, data = blocks[i % len(blocks)]
            view = cache.get_view(loc)
            if view is not None:
                if view != data:
                    wrong.append(str(loc))
                seen.append(1)
                hit.set()
                view.release()
            i += 1

    def churner() -> None:
        hit.wait(30)  # start evicting once the readers are under way
        for _ in range(6):
            for loc, data in blocks:
                cache.put(loc, data)  # a block not held evicts the least recently used
        stop.set()

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(3)] + [threading.Thread(target=churner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert seen, "no reader ever hit"
    stats = cache.stats()
    assert stats.evictions > 0 and stats.errors == 0 and stats.corrupt == 0
    assert stats.current_bytes <= 3 * MiB
    cache.close()


ROOM = 2 * MiB + 512 * KiB  # two 1 MiB blocks fit, a third evicts one


def _two_stored(path: Path, seeds: tuple[int, int, int]) -> tuple[tuple[Locator, bytes], ...]:
    """Three 1 MiB blocks; the first two stored (in that order) in a cache at *path* of `ROOM`."""
    blocks = tuple(_block(n, MiB) for n in seeds)
    with DiskBlockCache(path, ROOM) as setup:
        setup.put(*blocks[0])
        setup.put(*blocks[1])
    return blocks


def test_hits_reach_other_processes_eviction_order_when_written(tmp_path: Path) -> None:
    path = tmp_path / "c"
    first, second, third = _two_stored(path, (50, 51, 52))
    reader = DiskBlockCache(path, ROOM, touch_delay=3600)
    view = reader.get_view(first[0])  # the oldest entry, now used; not yet written to the index
    assert view == first[1]
    reader.close()  # writes it
    with DiskBlockCache(path, ROOM) as other:  # another process, say
        other.put(*third)
        assert other.get(second[0]) is None  # the least recently used, once the hit is known
        assert other.get(first[0]) == first[1]


def test_a_dropped_cache_object_still_writes_its_hits(tmp_path: Path) -> None:
    path = tmp_path / "c"
    first, second, third = _two_stored(path, (53, 54, 55))
    reader = DiskBlockCache(path, ROOM, touch_delay=3600)
    assert reader.get(first[0]) == first[1]
    del reader
    gc.collect()
    with DiskBlockCache(path, ROOM) as other:
        other.put(*third)
        assert other.get(second[0]) is None and other.get(first[0]) == first[1]


def test_an_unwritten_hit_is_not_seen_by_another_process_yet(tmp_path: Path) -> None:
    # The other side of the batching: until the hits are written, another process evicts by
    # what it knows (the documented delay); this object's own evictions know every hit.
    path = tmp_path / "c"
    first, second, third = _two_stored(path, (56, 57, 58))
    reader = DiskBlockCache(path, ROOM, touch_delay=3600)
    assert reader.get(first[0]) == first[1]
    with DiskBlockCache(path, ROOM) as other:
        other.put(*third)
        assert other.get(first[0]) is None and other.get(second[0]) == second[1]
    reader.close()


def test_with_no_delay_every_hit_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c"
    first, second, third = _two_stored(path, (59, 60, 61))
    reader = DiskBlockCache(path, ROOM, touch_delay=0)
    assert reader.get(first[0]) == first[1]
    with DiskBlockCache(path, ROOM) as other:
        other.put(*third)
        assert other.get(second[0]) is None and other.get(first[0]) == first[1]
    reader.close()


def test_a_view_survives_eviction_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "c"
    loc, data = _block(70, MiB)
    cache = DiskBlockCache(path, 2 * MiB + 512 * KiB)
    cache.put(loc, data)
    view = cache.get_view(loc)
    assert view is not None and isinstance(view.obj, mmap.mmap)
    other = (
        "import os, sys\n"
        "from keepstore import DiskBlockCache, Locator\n"
        "cache = DiskBlockCache(sys.argv[1], 2 * 2**20 + 512 * 2**10)\n"
        "for n in range(4):\n"
        "    data = os.urandom(2**20)\n"
        "    cache.put(Locator.for_data(data), data)\n"
        "print(cache.stats().evictions)\n"
        "cache.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", other, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 2
    assert cache.get(loc) is None  # evicted (and its file unlinked) by the other process
    assert view == data
    cache.close()


def test_threads_viewing_one_missing_block_share_one_fetch(tmp_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "c", 16 * MiB)
    loc, data = _block(71, MiB)
    calls: list[int] = []
    start = threading.Barrier(4)
    views: list[memoryview] = []

    def fetch() -> bytes:
        calls.append(1)
        wait_until(lambda: cache.stats().joined == 3)  # hold the flight until the others wait on it
        return data

    def reader() -> None:
        start.wait()
        views.append(cache.get_or_fetch_view(loc, fetch))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(views) == 4 and all(v == data and v.readonly for v in views)
    cache.close()


def test_block_index_writes_remembered_hits_once_they_are_old_enough(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "c"
    loc, data = _block(72, MiB)
    with DiskBlockCache(path, 16 * MiB) as cache:
        cache.put(loc, data)
    index = BlockIndex(str(path), 5.0, touch_delay=2.0, clock=lambda: now[0])
    assert index.find(str(loc)) is not None and index.find("0" * 32 + "+1") is None
    assert index.touch(str(loc)) is False
    now[0] += 1.0
    assert index.touch(str(loc)) is False
    now[0] += 1.0
    assert index.touch(str(loc)) is True  # the oldest remembered hit is now touch_delay old
    index.flush()
    with sqlite3.connect(path / "cache.db") as db:
        (when,) = db.execute("SELECT access_time FROM Cache WHERE key = ?", (str(loc),)).fetchone()
    assert when == 1002.0
    assert index.touch(str(loc)) is False  # a new batch starts
    index.close()
