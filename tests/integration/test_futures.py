"""KeepClient.put_async/get_async/head_async against a keep serve cluster: results, errors, cancel, close."""

from __future__ import annotations

from concurrent.futures import Future, wait
from typing import Any

import pytest

from keepstore import BlockNotFound, KeepError, Locator
from keepstore.server.faults import Gate
from keepstore.testing import KeepCluster, wait_until

MISSING = "d41d8cd98f00b204e9800998ecf8427f+1"


def _wait_running(future: Future[Any], seconds: float = 10.0) -> None:
    wait_until(lambda: future.running() or future.done(), seconds, what="the first operation's start")


def test_put_async_and_get_async_return_futures_of_locator_and_bytes(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        put = kc.put_async(b"hello futures")
        assert isinstance(put, Future)
        loc = put.result(timeout=30)
        assert loc.bare() == Locator.for_data(b"hello futures")
        assert kc.get_async(loc).result(timeout=30) == b"hello futures"
        assert kc.head_async(str(loc)).result(timeout=30) is True


def test_future_of_a_missing_block_holds_block_not_found(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        future = kc.get_async(MISSING)
        assert isinstance(future.exception(timeout=30), BlockNotFound)
        with pytest.raises(BlockNotFound):
            future.result()
        with pytest.raises(BlockNotFound):
            kc.head_async(MISSING).result(timeout=30)


def test_cancel_stops_work_not_yet_started_and_not_work_running(keep_cluster: KeepCluster) -> None:
    gate = Gate()  # the first put's PUTs wait here: it cannot finish before the cancels
    for server in keep_cluster.servers:
        server.faults.hold(gate, methods="PUT", times=None, timeout=60.0)
    with keep_cluster.client(threads=1) as kc:
        try:
            first = kc.put_async(b"first, running")
            second = kc.put_async(b"second, queued")
            _wait_running(first)
            gate.wait_for(1, timeout=30)  # the first is on the wire, the second still queued
            assert second.cancel() is True
            assert second.cancelled()
            assert first.cancel() is False
        finally:
            gate.open()
        first.result(timeout=30)
    assert keep_cluster.holders(Locator.for_data(b"first, running"))
    assert keep_cluster.holders(Locator.for_data(b"second, queued")) == []


def test_queued_puts_never_starve_the_replica_pool(keep_cluster: KeepCluster) -> None:
    # One thread in each pool: if whole puts and their replica writes shared a pool, the
    # first put would wait forever for a thread its queued siblings hold.
    with keep_cluster.client(threads=1, copies=2) as kc:
        futures = [kc.put_async(f"block {i}".encode()) for i in range(6)]
        _, pending = wait(futures, timeout=60)
        assert not pending
        assert all(len(keep_cluster.holders(f.result())) == 2 for f in futures)


def test_close_finishes_queued_work_then_refuses_new_work(keep_cluster: KeepCluster) -> None:
    kc = keep_cluster.client(threads=2)
    futures = [kc.put_async(f"queued {i}".encode()) for i in range(10)]
    kc.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(KeepError, match="closed"):
        kc.get_async(MISSING)
    kc.close()  # a second close is harmless


def test_async_calls_run_in_parallel(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client(threads=4) as kc:
        locs = [kc.put(f"parallel {i}".encode()) for i in range(4)]
        gate = Gate()
        for server in keep_cluster.servers:
            server.faults.hold(gate, methods="GET", times=None)
        futures = [kc.get_async(loc) for loc in locs]
        gate.wait_for(4)  # all four GETs are at the servers at once: run in parallel, not in turn
        gate.open()
        assert [f.result(timeout=30) for f in futures] == [f"parallel {i}".encode() for i in range(4)]
