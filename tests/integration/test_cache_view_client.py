"""KeepClient.get_view against keep serve: verified, no network on a hit, refetched when the cached copy is damaged."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from keepstore import BlockNotFound, KeepClient, LocalStore, Locator
from keepstore.cache import DiskBlockCache, MemoryBlockCache
from keepstore.client import HedgePolicy
from keepstore.testing import KeepCluster

KiB = 1024
MiB = 1024 * KiB
# For tests that count GETs: a hedge (after 0.1 s without a first byte, which a busy machine
# gives) would add one. test_hedged_reads tests hedging.
NO_HEDGE = HedgePolicy(enabled=False)


def _gets(cluster: KeepCluster, loc: Locator) -> int:
    return sum(1 for server in cluster.servers for r in server.requests
               if r.method == "GET" and loc.md5 in r.path)


def test_a_disk_hit_is_served_as_a_mapping_without_the_network(keep_cluster_factory: Callable[..., KeepCluster],
                                                                tmp_path: Path) -> None:
    cluster = keep_cluster_factory(1)
    data = os.urandom(3 * MiB)
    with cluster.client(cache=DiskBlockCache(tmp_path / "cache"), retries=0, copies=1) as kc:
        loc = kc.put(data)
        first = kc.get_view(loc)  # a miss: fetched, verified, cached
        assert first == data and first.readonly and _gets(cluster, loc) == 1
        assert kc.stats().cache_hits == 0
        cluster.servers[0].stop(grace=1.0)
        second = kc.get_view(loc)
        assert second == data and second.readonly
        assert isinstance(second.obj, mmap.mmap)
        assert kc.stats().cache_hits == 1 and _gets(cluster, loc) == 1
        assert kc.get(loc) == data and isinstance(kc.get(loc), bytes)


def test_a_damaged_cache_file_is_read_from_the_network_again(keep_cluster: KeepCluster, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    path = tmp_path / "cache"
    cache = DiskBlockCache(path)
    with keep_cluster.client(cache=cache, retries=0, hedge=NO_HEDGE) as kc:
        loc = kc.put(data)
        assert kc.get_view(loc) == data
        (victim,) = sorted(path.rglob("*.val"))
        with open(victim, "r+b") as f:
            f.seek(MiB)
            f.write(b"\x00" * 16)
        view = kc.get_view(loc)
        assert view == data  # never the damaged bytes
        assert _gets(keep_cluster, loc) == 2
        assert cache.stats().corrupt == 1
        assert kc.get_view(loc) == data and _gets(keep_cluster, loc) == 2  # cached again, good this time
    cache.close()


def test_without_a_cache_a_view_is_of_the_verified_bytes(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        loc = kc.put(b"no cache here")
        view = kc.get_view(loc)
        assert view == b"no cache here" and view.readonly
        assert kc.get_view("d41d8cd98f00b204e9800998ecf8427e+0") == b""
        with pytest.raises(BlockNotFound):
            kc.get_view("37b51d194a7513e45b56f6524f2d51f2+3")


def test_a_memory_cache_hit_is_a_view_of_the_cached_bytes(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client(cache=MemoryBlockCache(), hedge=NO_HEDGE) as kc:
        loc = kc.put(b"kept in memory")
        assert kc.get_view(loc) == b"kept in memory"
        view = kc.get_view(loc)
        assert view == b"kept in memory" and isinstance(view.obj, bytes)
        assert kc.stats().cache_hits == 1 and _gets(keep_cluster, loc) == 1


def test_a_local_store_gives_views_too(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    loc = store.put(b"local")
    view = store.get_view(loc)
    assert view == b"local" and view.readonly


def test_threads_reading_views_through_a_small_cache_see_whole_blocks(keep_cluster: KeepCluster,
                                                                     tmp_path: Path) -> None:
    blocks = [os.urandom(MiB) for _ in range(6)]
    with keep_cluster.client() as writer:
        locs = [writer.put(b) for b in blocks]
    cache = DiskBlockCache(tmp_path / "cache", 3 * MiB + 512 * KiB)  # half the blocks fit
    wrong: list[int] = []
    start = threading.Barrier(4)
    with KeepClient(services=keep_cluster.urls, token=keep_cluster.token, cache=cache, retries=0) as kc:

        def reader(offset: int) -> None:
            start.wait()
            for i in range(24):
                n = (i + offset) % len(blocks)
                view = kc.get_view(locs[n])
                if view != blocks[n]:
                    wrong.append(n)
                view.release()

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wrong == []
        stats = cache.stats()
        assert stats.evictions > 0 and stats.errors == 0 and stats.corrupt == 0
        assert stats.current_bytes <= 3 * MiB + 512 * KiB
        assert kc.stats().cache_hits + sum(_gets(keep_cluster, loc) for loc in locs) >= 4 * 24
    cache.close()
