"""KeepClient with a block cache against keep serve: served without servers, single-flight, prefetch, write-through."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import wait
from pathlib import Path

import pytest
from test_cache import read_only

from keepstore import KeepClient, Locator, ReadError
from keepstore.cache import DiskBlockCache, MemoryBlockCache, TieredBlockCache
from keepstore.client import HedgePolicy
from keepstore.server.faults import Gate
from keepstore.testing import KeepCluster

# For tests that count GETs: a hedge (after 0.1 s without a first byte, which a busy machine or
# a held request gives) would add one. test_hedged_reads tests hedging.
NO_HEDGE = HedgePolicy(enabled=False)


def _gets(cluster: KeepCluster, loc: Locator) -> int:
    return sum(1 for server in cluster.servers for r in server.requests
               if r.method == "GET" and loc.md5 in r.path)


def _stop_all(cluster: KeepCluster) -> None:
    for server in cluster.servers:
        server.stop(grace=1.0)


def test_a_cached_block_is_served_after_its_only_server_stops(keep_cluster_factory: Callable[..., KeepCluster],
                                                              tmp_path: Path) -> None:
    cluster = keep_cluster_factory(1)
    with cluster.client(cache=DiskBlockCache(tmp_path / "cache"), retries=0, copies=1) as kc:
        loc = kc.put(b"only one server has me")
        assert kc.get(loc) == b"only one server has me"
        cluster.servers[0].stop(grace=1.0)
        assert kc.get(loc) == b"only one server has me"
        assert kc.stats().cache_hits == 1
    with cluster.client(cache=DiskBlockCache(tmp_path / "cache"), retries=0) as fresh:
        assert fresh.get(loc) == b"only one server has me"  # a new client on the same directory


def test_six_threads_getting_one_block_make_one_request(keep_cluster: KeepCluster) -> None:
    # Hedging off: every server is slow to its first byte here, so the one fetch would rightly hedge.
    with keep_cluster.client(cache=MemoryBlockCache(), hedge=HedgePolicy(enabled=False)) as kc:
        loc = kc.put(b"wanted by six threads")
        for server in keep_cluster.servers:
            server.faults.delay(0.3, methods="GET", times=None)
        barrier = threading.Barrier(6)
        results: list[bytes] = []

        def read() -> None:
            barrier.wait()
            results.append(kc.get(loc))

        threads = [threading.Thread(target=read) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert results == [b"wanted by six threads"] * 6
    assert _gets(keep_cluster, loc) == 1


def test_prefetched_blocks_are_read_after_the_servers_stop(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as writer:
        locs = [writer.put(f"prefetch me {i}".encode()) for i in range(5)]
    gate = Gate()
    for server in keep_cluster.servers:
        server.faults.hold(gate, methods="GET", times=None)
    with keep_cluster.client(cache=MemoryBlockCache(), retries=0, hedge=NO_HEDGE) as kc:
        # Every GET waits at the gate: prefetch must return before any block has arrived. A
        # repeat is skipped while its block is still queued.
        futures = kc.prefetch(locs + locs)
        assert len(futures) == 5 and not any(f.done() for f in futures)
        gate.open()
        wait(futures, timeout=30)
        assert [_gets(keep_cluster, loc) for loc in locs] == [1] * 5
        _stop_all(keep_cluster)
        assert [kc.get(loc) for loc in locs] == [f"prefetch me {i}".encode() for i in range(5)]


def test_prefetch_without_a_cache_does_nothing(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        loc = kc.put(b"not prefetched")
        assert kc.prefetch([loc]) == []
    assert _gets(keep_cluster, loc) == 0


def test_prefetch_failures_are_logged_not_raised(keep_cluster: KeepCluster, caplog: pytest.LogCaptureFixture) -> None:
    with keep_cluster.client(cache=MemoryBlockCache(), retries=0) as kc:
        _stop_all(keep_cluster)
        with caplog.at_level(logging.WARNING, logger="keepstore.client"):
            futures = kc.prefetch([Locator.for_data(b"unreachable")])
            wait(futures, timeout=30)
        assert futures[0].exception() is None
    assert "prefetch of" in caplog.text


def test_write_through_caches_blocks_just_put(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client(cache=MemoryBlockCache(), cache_writes=True, retries=0) as kc, \
            keep_cluster.client(cache=MemoryBlockCache(), retries=0) as plain:
        cached = kc.put(b"written through")
        not_cached = plain.put(b"not written through")
        _stop_all(keep_cluster)
        assert kc.get(cached) == b"written through"
        with pytest.raises(ReadError):
            plain.get(not_cached)


def test_a_read_only_cache_directory_does_not_fail_gets(keep_cluster: KeepCluster, tmp_path: Path) -> None:
    path = tmp_path / "ro-cache"
    path.mkdir()
    with keep_cluster.client() as writer:
        loc = writer.put(b"served from the network")
    with read_only(path), keep_cluster.client(cache=DiskBlockCache(path), cache_writes=True) as kc:
        assert kc.get(loc) == b"served from the network"
        assert kc.put(b"still writable") == kc.put(b"still writable")


class _BrokenCache:
    """A third-party cache whose every call fails."""

    def get(self, locator: Locator) -> bytes | None:
        raise OSError("cache disk gone")

    def put(self, locator: Locator, data: bytes) -> None:
        raise OSError("cache disk gone")


def test_a_failing_foreign_cache_is_logged_once_and_bypassed(keep_cluster: KeepCluster,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with keep_cluster.client(cache=_BrokenCache(), cache_writes=True) as kc, \
            caplog.at_level(logging.WARNING, logger="keepstore.client"):
        loc = kc.put(b"network still works")
        assert kc.get(loc) == b"network still works"
        assert kc.get(loc) == b"network still works"
    assert caplog.text.count("cache disk gone") == 1


def test_from_env_wires_a_disk_cache_at_keep_cache_dir(keep_cluster: KeepCluster, tmp_path: Path) -> None:
    env = {**keep_cluster.env(), "HOME": str(tmp_path), "KEEP_CACHE_DIR": str(tmp_path / "blocks")}
    kc = KeepClient.from_env(env)
    assert isinstance(kc, KeepClient) and isinstance(kc.cache, DiskBlockCache)
    assert kc.cache.path == str(tmp_path / "blocks")
    loc = kc.put(b"cached via from_env")
    kc.get(loc)
    kc.close()
    with DiskBlockCache(tmp_path / "blocks") as cache:
        assert cache.get(loc) == b"cached via from_env"


def test_from_env_cache_true_uses_the_xdg_cache_home(keep_cluster: KeepCluster, tmp_path: Path) -> None:
    env = {**keep_cluster.env(), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    with KeepClient.from_env(env) as plain:
        assert plain.cache is None  # type: ignore[attr-defined]
    with KeepClient.from_env(env, cache=True) as kc:
        assert kc.cache.path == str(tmp_path / "xdg" / "keepstore" / "blocks")  # type: ignore[attr-defined]
    with KeepClient.from_env({**env, "KEEP_CACHE_DIR": str(tmp_path / "c")}, cache=False) as off:
        assert off.cache is None  # type: ignore[attr-defined]
    memory = MemoryBlockCache()
    with KeepClient.from_env(env, cache=memory) as given:
        assert given.cache is memory  # type: ignore[attr-defined]


def test_cache_md_examples_run() -> None:
    import doctest

    path = Path(__file__).resolve().parents[2] / "docs" / "cache.md"
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_tiered_cache_serves_from_memory_then_from_disk_for_a_new_process_view(
        keep_cluster: KeepCluster, tmp_path: Path) -> None:
    with keep_cluster.client() as writer:
        loc = writer.put(b"memory in front of disk")
    tiered = TieredBlockCache(MemoryBlockCache(), DiskBlockCache(tmp_path / "c"))
    with keep_cluster.client(cache=tiered, retries=0, hedge=NO_HEDGE) as kc:
        assert kc.get(loc) == b"memory in front of disk"  # a miss in both tiers: one GET fills both
        assert kc.get(loc) == b"memory in front of disk"
        assert _gets(keep_cluster, loc) == 1
        assert tiered.memory.stats().hits == 1 and tiered.disk.stats().hits == 0
    _stop_all(keep_cluster)
    # A later client (a new process, say) with an empty memory tier: the disk tier answers and
    # promotes the block into memory.
    later = TieredBlockCache(MemoryBlockCache(), DiskBlockCache(tmp_path / "c"))
    with keep_cluster.client(cache=later, retries=0) as kc:
        assert kc.get(loc) == b"memory in front of disk"
        assert later.disk.stats().hits == 1 and later.memory.get(loc) == b"memory in front of disk"
