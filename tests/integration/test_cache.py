"""Block caches in one process: keys, LRU bounds, verification, single-flight, and surviving a broken directory."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from keepstore import ConfigError, Locator, LocatorError, ReadError
from keepstore.cache import BlockCache, DiskBlockCache, MemoryBlockCache, TieredBlockCache, cache_key
from keepstore.cache.filelock import block_lock
from keepstore.testing import wait_until

KiB = 1024
MiB = 1024 * KiB
SIGNED = "A" + "0" * 40 + "@65000000"


def block(n: int, size: int = 256 * KiB) -> tuple[Locator, bytes]:
    data = (n.to_bytes(4, "big") * (size // 4 + 1))[:size]
    data = os.urandom(16) + data[16:]
    return Locator.for_data(data), data


def dir_bytes(path: Path) -> int:
    """Apparent size of everything under *path* (files, including SQLite's WAL and lock files)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def val_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.val"))


def make_cache(kind: str, tmp_path: Path, max_bytes: int = 64 * MiB) -> BlockCache:
    if kind == "memory":
        return MemoryBlockCache(max_bytes)
    if kind == "disk":
        return DiskBlockCache(tmp_path / "cache", max_bytes)
    return TieredBlockCache(MemoryBlockCache(max_bytes), DiskBlockCache(tmp_path / "cache", max_bytes))


KINDS = ["memory", "disk", "tiered"]


# -- keys and the interface ---------------------------------------------------------------


def test_signed_and_bare_locators_share_one_entry(tmp_path):
    loc, data = block(1)
    signed = loc.with_hints(SIGNED, "K@zzzzz")
    assert cache_key(signed) == cache_key(str(loc)) == f"{loc.md5}+{loc.size}"
    with DiskBlockCache(tmp_path / "c", 16 * MiB) as cache:
        cache.put(str(signed), data)
        assert cache.get(loc) == data
        assert cache.get(str(loc)) == data
        assert [str(x) for x in cache.locators()] == [str(loc)]


@pytest.mark.parametrize("kind", KINDS)
def test_put_refuses_data_that_does_not_match_the_locator(kind, tmp_path):
    loc, data = block(1)
    cache = make_cache(kind, tmp_path)
    with pytest.raises(LocatorError, match=loc.md5):
        cache.put(loc, data[:-1] + b"x")
    assert cache.get(loc) is None


@pytest.mark.parametrize("kind", KINDS)
def test_stats_count_hits_misses_and_bytes(kind, tmp_path):
    loc, data = block(1)
    cache = make_cache(kind, tmp_path)
    assert cache.get(loc) is None
    cache.put(loc, bytearray(data))
    assert cache.get(loc) == data
    cache.discard(loc)
    assert cache.get(loc) is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.bytes_read, stats.bytes_written) == (1, 2, len(data), len(data))
    assert stats.errors == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda p: MemoryBlockCache(-1),
        lambda p: MemoryBlockCache(1.5),  # type: ignore[arg-type]
        lambda p: DiskBlockCache(p, -1),
        lambda p: DiskBlockCache(p, MiB, verify="sha7"),
        lambda p: DiskBlockCache(p / "file", MiB),
    ],
    ids=["memory-negative", "memory-float", "disk-negative", "disk-verify", "disk-path-is-a-file"],
)
def test_invalid_arguments_raise_config_error(make, tmp_path):
    (tmp_path / "file").write_bytes(b"not a directory")
    with pytest.raises(ConfigError):
        make(tmp_path)


# -- memory -------------------------------------------------------------------------------


def test_memory_cache_evicts_least_recently_used_by_bytes():
    cache = MemoryBlockCache(3 * 256 * KiB)
    blocks = [block(n) for n in range(4)]
    for loc, data in blocks[:3]:
        cache.put(loc, data)
    assert cache.get(blocks[0][0]) is not None  # now most recently used
    cache.put(*blocks[3])
    assert cache.get(blocks[1][0]) is None
    assert all(cache.get(loc) == data for loc, data in (blocks[0], blocks[2], blocks[3]))
    assert cache.stats().evictions == 1
    assert cache.stats().current_bytes == 3 * 256 * KiB


def test_memory_cache_skips_a_block_larger_than_its_bound():
    cache = MemoryBlockCache(100 * KiB)
    loc, data = block(1)
    cache.put(loc, data)
    assert cache.get(loc) is None and len(cache) == 0


# -- disk: persistence, bounds, verification -----------------------------------------------


def test_disk_block_is_served_by_a_new_instance_on_the_same_directory(tmp_path):
    loc, data = block(1, 3 * MiB)
    with DiskBlockCache(tmp_path / "c", 64 * MiB) as first:
        first.put(loc, data)
    with DiskBlockCache(tmp_path / "c", 64 * MiB) as second:
        assert second.get(str(loc.with_hints(SIGNED))) == data
        assert second.stats().hits == 1


def test_disk_directory_stays_within_max_bytes_after_many_puts(tmp_path):
    max_bytes, size = 8 * MiB, MiB
    path = tmp_path / "c"
    cache = DiskBlockCache(path, max_bytes)
    for n in range(40):
        cache.put(*block(n, size))
        assert dir_bytes(path) <= max_bytes + size, f"after put {n}"
    assert cache.stats().current_bytes <= max_bytes
    assert cache.stats().evictions >= 40 - max_bytes // size
    assert len(val_files(path)) == len(list(cache.locators())) >= max_bytes // size - 1


def test_disk_cache_evicts_least_recently_used(tmp_path):
    cache = DiskBlockCache(tmp_path / "c", 4 * MiB + 512 * KiB)
    blocks = [block(n, MiB) for n in range(5)]
    for loc, data in blocks[:4]:
        cache.put(loc, data)
    assert cache.get(blocks[0][0]) == blocks[0][1]  # refresh the oldest
    cache.put(*blocks[4])
    assert cache.get(blocks[1][0]) is None
    assert cache.get(blocks[0][0]) == blocks[0][1]


def test_disk_cache_holds_small_blocks_inside_its_database(tmp_path):
    path = tmp_path / "c"
    cache = DiskBlockCache(path, MiB)
    loc, data = block(1, 1000)
    cache.put(loc, data)
    assert val_files(path) == []
    assert DiskBlockCache(path, MiB).get(loc) == data


def test_putting_a_cached_block_again_does_not_rewrite_it(tmp_path):
    path = tmp_path / "c"
    cache = DiskBlockCache(path, 16 * MiB)
    loc, data = block(1, MiB)
    cache.put(loc, data)
    before = val_files(path)
    cache.put(loc, data)
    assert val_files(path) == before
    assert cache.stats().bytes_written == MiB


@pytest.mark.parametrize("verify", ["crc32", "md5"])
def test_flipped_byte_in_a_cache_file_is_detected_evicted_and_refetched(verify, tmp_path):
    path = tmp_path / "c"
    loc, data = block(1, MiB)
    cache = DiskBlockCache(path, 16 * MiB, verify=verify)
    cache.put(loc, data)
    (victim,) = val_files(path)
    with open(victim, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0x01]))
    assert cache.get(loc) is None
    assert cache.stats().corrupt == 1
    assert val_files(path) == []  # the entry is gone, not just skipped
    fetches: list[int] = []

    def fetch() -> bytes:
        fetches.append(1)
        return data

    assert cache.get_or_fetch(loc, fetch) == data
    assert fetches == [1]
    assert DiskBlockCache(path, 16 * MiB).get(loc) == data


def test_truncated_cache_file_is_detected(tmp_path):
    path = tmp_path / "c"
    loc, data = block(1, MiB)
    cache = DiskBlockCache(path, 16 * MiB)
    cache.put(loc, data)
    (victim,) = val_files(path)
    os.truncate(victim, MiB // 2)
    assert cache.get(loc) is None
    assert cache.stats().corrupt == 1


def test_cache_file_swapped_for_another_blocks_file_is_detected(tmp_path):
    path = tmp_path / "c"
    (loc1, data1), (loc2, data2) = block(1, MiB), block(2, MiB)
    cache = DiskBlockCache(path, 16 * MiB)
    cache.put(loc1, data1)
    cache.put(loc2, data2)
    first, second = val_files(path)
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    assert cache.get(loc1) is None and cache.get(loc2) is None
    assert cache.stats().corrupt == 2


# -- single-flight -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_six_threads_getting_one_block_cause_one_fetch(kind, tmp_path):
    cache = make_cache(kind, tmp_path)
    loc, data = block(1, MiB)
    calls = []
    start = threading.Barrier(6)

    def fetch() -> bytes:
        calls.append(threading.get_ident())
        wait_until(lambda: cache.stats().joined == 5)  # hold the flight until the others wait on it
        return data

    def reader() -> bytes:
        start.wait()
        return cache.get_or_fetch(str(loc.with_hints(SIGNED)), fetch)

    results = run_threads(reader, 6)
    assert len(calls) == 1 and cache.stats().joined == 5
    assert results == [data] * 6


@pytest.mark.parametrize("kind", KINDS)
def test_fetch_exception_reaches_every_waiter_and_the_next_call_retries(kind, tmp_path):
    cache = make_cache(kind, tmp_path)
    loc, data = block(1)
    calls = []
    start = threading.Barrier(4)

    def failing() -> bytes:
        calls.append(1)
        wait_until(lambda: cache.stats().joined == 3)  # every other reader waits on this fetch
        raise ReadError("service down", locator=str(loc))

    def reader() -> BaseException | bytes:
        start.wait()
        try:
            return cache.get_or_fetch(loc, failing)
        except ReadError as exc:
            return exc

    results = run_threads(reader, 4)
    assert len(calls) == 1
    assert all(isinstance(r, ReadError) and "service down" in str(r) for r in results)
    assert cache.get_or_fetch(loc, lambda: data) == data
    assert cache.get(loc) == data


def test_a_slow_fetch_does_not_hold_up_other_blocks(tmp_path):
    cache = DiskBlockCache(tmp_path / "c", 16 * MiB)
    (slow_loc, slow_data), (fast_loc, fast_data) = block(1), block(2)
    release = threading.Event()

    slow_returned = threading.Event()

    def slow() -> bytes:
        release.wait(10)
        slow_returned.set()
        return slow_data

    slow_thread = threading.Thread(target=cache.get_or_fetch, args=(slow_loc, slow))
    slow_thread.start()
    try:
        assert cache.get_or_fetch(fast_loc, lambda: fast_data) == fast_data
        assert not slow_returned.is_set(), "the fast block waited for the slow one's fetch"
    finally:
        release.set()
        slow_thread.join()
    assert cache.get(slow_loc) == slow_data


def test_fetched_bytes_that_do_not_match_are_an_error_and_not_cached(tmp_path):
    cache = DiskBlockCache(tmp_path / "c", 16 * MiB)
    loc, data = block(1)
    with pytest.raises(ReadError, match=loc.md5):
        cache.get_or_fetch(loc, lambda: data[::-1])
    assert cache.get(loc) is None


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_a_lock_held_elsewhere_delays_the_fetch_only_until_lock_timeout(tmp_path):
    cache = DiskBlockCache(tmp_path / "c", 16 * MiB, lock_timeout=0.5)
    loc, data = block(1)
    lock_path = tmp_path / "c" / "locks" / f"{cache_key(loc)}.lock"
    holding, release = threading.Event(), threading.Event()

    def hung_holder() -> None:  # another thread, so not this thread's own (re-entrant) lock
        with block_lock(str(lock_path), 1) as held:
            assert held
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hung_holder)
    holder.start()
    try:
        assert holding.wait(30)
        started = time.monotonic()
        assert cache.get_or_fetch(loc, lambda: data) == data
        # The 0.5 s lock timeout, not the holder's 60 s (a bound with room for a busy machine).
        assert 0.4 <= time.monotonic() - started < 10
    finally:
        release.set()
        holder.join()
    assert cache.get(loc) == data
    assert not lock_path.exists()


# -- tiers --------------------------------------------------------------------------------


def test_tiered_cache_promotes_a_disk_hit_into_memory(tmp_path):
    loc, data = block(1)
    with DiskBlockCache(tmp_path / "c", 16 * MiB) as disk:
        disk.put(loc, data)
    tiered = TieredBlockCache(MemoryBlockCache(16 * MiB), DiskBlockCache(tmp_path / "c", 16 * MiB))
    assert tiered.get(loc) == data
    assert tiered.get(loc) == data
    assert tiered.memory.stats().hits == 1
    assert tiered.disk.stats().hits == 1
    assert tiered.stats().hits == 2


# -- a broken cache never breaks a get ----------------------------------------------------


def assert_degraded_but_serving(cache: BlockCache, caplog: pytest.LogCaptureFixture) -> None:
    """get_or_fetch still returns fetched bytes, repeatedly, with one warning and errors counted."""
    for n in range(3):
        loc, data = block(100 + n, MiB)
        assert cache.get_or_fetch(loc, lambda data=data: data) == data  # type: ignore[misc]  # bound default
    warnings = [r for r in caplog.records if r.name.startswith("keepstore.cache") and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert cache.stats().errors >= 1


def test_missing_lock_directory_costs_nothing(tmp_path, caplog):
    path = tmp_path / "c"
    cache = DiskBlockCache(path, 16 * MiB)
    (path / "locks").rmdir()
    loc, data = block(1)
    assert cache.get_or_fetch(loc, lambda: data) == data
    assert cache.get(loc) == data
    assert cache.stats().errors == 0 and cache.usable


def test_damaged_database_degrades_to_no_cache(tmp_path, caplog):
    path = tmp_path / "c"
    path.mkdir()
    (path / "cache.db").write_bytes(b"this is not a sqlite database" * 1000)
    cache = DiskBlockCache(path, 16 * MiB)
    assert not cache.usable
    assert_degraded_but_serving(cache, caplog)


def test_database_damaged_while_in_use_degrades_to_no_cache(tmp_path, caplog):
    path = tmp_path / "c"
    cache = DiskBlockCache(path, 16 * MiB)
    loc, data = block(1)
    cache.put(loc, data)
    cache.close()
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).write_bytes(os.urandom(8192))
    reopened = DiskBlockCache(path, 16 * MiB)
    assert reopened.get(loc) is None
    assert_degraded_but_serving(reopened, caplog)


def test_unusable_path_degrades_to_no_cache(tmp_path, caplog):
    (tmp_path / "file").write_bytes(b"x")
    cache = DiskBlockCache(tmp_path / "file" / "cache", 16 * MiB)  # parent is a file: ENOTDIR
    assert not cache.usable
    assert_degraded_but_serving(cache, caplog)


@contextlib.contextmanager
def mounted(*args: str):
    """Run ``mount *args``; skip the test when this machine does not allow it."""
    target = args[-1]
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode}); needs root with CAP_SYS_ADMIN")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", target], check=False)


@contextlib.contextmanager
def read_only(path: Path):
    """Make *path* really read-only: a read-only bind mount (root ignores mode bits), or chmod."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    with mounted("--bind", str(path), str(path)):
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        yield


def test_read_only_directory_still_lets_gets_succeed(tmp_path, caplog):
    path = tmp_path / "c"
    loc, data = block(1)
    with DiskBlockCache(path, 16 * MiB) as writer:
        writer.put(loc, data)
    with read_only(path):
        with pytest.raises(OSError):
            (path / "probe").write_bytes(b"x")
        cache = DiskBlockCache(path, 16 * MiB)
        assert cache.get_or_fetch(loc, lambda: data) == data
        assert_degraded_but_serving(cache, caplog)
        cache.close()


def test_full_disk_still_lets_gets_succeed_and_keeps_serving_what_is_cached(tmp_path, caplog):
    path = tmp_path / "c"
    path.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)):
        cache = DiskBlockCache(path, 64 * MiB)
        small_loc, small_data = block(1, 256 * KiB)
        cache.put(small_loc, small_data)
        big_loc, big_data = block(2, 3 * MiB)
        assert cache.get_or_fetch(big_loc, lambda: big_data) == big_data
        assert cache.stats().errors == 1
        assert cache.get(small_loc) == small_data  # reads still work after the disk filled up
        assert not any(p.stat().st_size < MiB and p.stat().st_size != 256 * KiB for p in val_files(path))
        assert_degraded_but_serving(cache, caplog)
        cache.close()


def run_threads(target, count: int) -> list:
    results: list = [None] * count

    def run(i: int) -> None:
        results[i] = target()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


# -- regressions found in review --------------------------------------------------------------


def test_verify_md5_rehashes_even_an_entry_tagged_crc32(tmp_path):
    """Regression: the check followed the entry's tag, so a crc32-tagged entry (written by a
    crc32-mode process, or forged with a matching CRC) was served by a verify="md5" cache."""
    import zlib

    import diskcache

    good, bad = b"x" * 100, b"y" * 100
    loc = Locator.for_data(good)
    raw = diskcache.Cache(str(tmp_path / "c"))
    raw.set(str(loc), bad, tag=f"crc32:{zlib.crc32(bad):08x}:{loc}")
    raw.close()
    cache = DiskBlockCache(tmp_path / "c", verify="md5")
    assert cache.get(loc) is None and cache.stats().corrupt == 1
    cache.close()


def test_eviction_gets_past_a_foreign_entry_with_a_pickled_key(tmp_path):
    """Regression: delete(key) cannot name a pickled (non-str) key, so eviction selected the
    same foreign row forever and the put never returned."""
    import diskcache

    raw = diskcache.Cache(str(tmp_path / "c"))
    raw.set(("foreign", 1), b"z" * 70_000)
    raw.close()
    cache = DiskBlockCache(tmp_path / "c", max_bytes=200_000)
    loc, data = block(7, 150_000)
    done = threading.Event()
    def put() -> None:
        cache.put(loc, data)
        done.set()

    threading.Thread(target=put, daemon=True).start()
    assert done.wait(10), "put did not return: eviction loops"
    assert cache.get(loc) == data and cache.stats().evictions >= 1
    cache.close()


def test_a_failed_flight_does_not_fail_a_waiter_that_asked_differently():
    """Regression: a waiter got the leader's exception, though the leader's locator (say, an
    expired signature) was not the waiter's."""
    cache = MemoryBlockCache()
    loc, data = block(3, 1000)
    expired = Locator.parse(f"{loc}+A{'0' * 40}@00000001")
    started = threading.Event()
    joiners = [1]  # how many waiters the leader's flight must have before it fails

    def failing() -> bytes:
        started.set()
        wait_until(lambda: cache.stats().joined == joiners[0])
        raise ReadError("the leader's own trouble")

    results: dict[str, object] = {}

    def lead() -> None:
        try:
            cache.get_or_fetch(expired, failing)
        except ReadError as exc:
            results["leader"] = exc

    leader = threading.Thread(target=lead)
    leader.start()
    assert started.wait(30)
    results["waiter"] = cache.get_or_fetch(loc, lambda: data)  # joins the flight, then fetches itself
    leader.join()
    assert isinstance(results["leader"], ReadError) and results["waiter"] == data
    # Another client (origin) sharing the cache is not failed by this one's trouble either.
    other, other_data = block(6, 1000)
    started.clear()
    joiners[0] = 2
    def lead_for_a() -> None:
        with contextlib.suppress(ReadError):
            cache.get_or_fetch(other, failing, origin="client A")

    threading.Thread(target=lead_for_a).start()
    assert started.wait(30)
    assert cache.get_or_fetch(other, lambda: other_data, origin="client B") == other_data


def test_a_fetch_that_reads_through_the_same_cache_does_not_wait_on_itself():
    cache = MemoryBlockCache()
    loc, data = block(4, 1000)

    def outer() -> bytes:
        return cache.get_or_fetch(loc, lambda: data)  # e.g. a read path over a client sharing the cache

    done: list[bytes] = []
    t = threading.Thread(target=lambda: done.append(cache.get_or_fetch(loc, outer)), daemon=True)
    t.start()
    t.join(30)
    assert done == [data], "the nested get_or_fetch waited on its own flight"


def test_nested_caches_on_one_directory_share_the_threads_block_lock(tmp_path):
    outer_disk = DiskBlockCache(tmp_path / "c", lock_timeout=600)
    inner_disk = DiskBlockCache(tmp_path / "c", lock_timeout=600)
    tiered = TieredBlockCache(MemoryBlockCache(), outer_disk)
    loc, data = block(5, 1000)
    done: list[bytes] = []
    fetcher = threading.Thread(target=lambda: done.append(
        tiered.get_or_fetch(loc, lambda: inner_disk.get_or_fetch(loc, lambda: data))), daemon=True)
    fetcher.start()
    fetcher.join(30)  # a wait on its own lock would last the 600 s lock timeout
    assert done == [data], "the inner cache waited on the lock its own thread held"
    outer_disk.close()
    inner_disk.close()


def test_a_directory_pruned_by_another_process_between_makedirs_and_open_is_made_again(tmp_path, monkeypatch):
    """Regression (seen in the two-process fill test): diskcache's Disk.remove prunes empty
    directories, so another process's eviction could remove the directory a block file was
    about to be created in, and the put failed (and switched the cache off)."""
    cache = DiskBlockCache(tmp_path / "c", 16 * MiB)
    loc, data = block(9, 200 * KiB)
    real_makedirs = os.makedirs
    pruned: list[str] = []

    def makedirs_then_pruned(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_makedirs(path, *args, **kwargs)
        if not pruned and Path(path).parent.parent == tmp_path / "c":  # a block's leaf directory
            pruned.append(str(path))
            os.rmdir(path)  # what the other process's eviction does right now

    monkeypatch.setattr(os, "makedirs", makedirs_then_pruned)
    cache.put(loc, data)
    monkeypatch.undo()
    assert pruned and cache.stats().errors == 0
    assert cache.get(loc) == data
    cache.close()
