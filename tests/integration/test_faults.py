"""Every fault the testing plugin offers, and what a KeepClient does about it.

These run against `keep_cluster` (three in-process `keep serve` servers on 127.0.0.1), the
same fixtures users get from ``keepstore.testing``.
"""

from __future__ import annotations

import os
import time

import pytest

from keepstore import BlockNotFound, Locator, ReadError, Retry, Timeout, probe_order
from keepstore.client import HedgePolicy
from keepstore.server.faults import Fault, FaultKind
from keepstore.testing import KeepCluster

FAST = Timeout(connect=1, read=2, min_bandwidth=32768)


class Sleeps(list[float]):
    """Record the client's backoff sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def ranked(cluster: KeepCluster, loc: Locator, kc) -> list[int]:
    """Server indexes in the client's probe order for *loc*."""
    roots = [s.root for s in probe_order(loc, kc.services)]
    return [cluster.urls.index(root) for root in roots]


def count(server, method: str, md5: str, status: int | None = None) -> int:
    return sum(1 for r in server.requests
               if r.method == method and md5 in r.path and (status is None or r.status == status))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def stored(keep_cluster, sleeps):
    """A client, a block stored with copies=2, and the probe order of the servers for it."""
    # One replica at a time: these tests time failover (hedged GETs: test_hedged_reads.py).
    kc = keep_cluster.client(timeout=FAST, retries=Retry(total=4), sleep=sleeps, hedge=HedgePolicy(enabled=False))
    data = os.urandom(300_000)
    loc = kc.put(data, copies=2)
    order = ranked(keep_cluster, loc, kc)
    assert sorted(keep_cluster.holders(loc)) == sorted(order[:2])
    yield kc, loc, data, order
    kc.close()


def test_fail_with_a_status_n_times_is_retried_until_success(keep_cluster, stored, sleeps):
    kc, loc, data, _order = stored
    for server in keep_cluster.servers:
        server.faults.fail(503, times=2, methods="GET")
    assert kc.get(loc) == data
    assert len(sleeps) >= 1 and kc.stats().retries >= 1
    assert sum(count(s, "GET", loc.md5, 503) for s in keep_cluster.servers) >= 2


def test_fail_404_everywhere_is_block_not_found_without_sleeping(keep_cluster, stored, sleeps):
    kc, loc, _, _ = stored
    for server in keep_cluster.servers:
        server.faults.fail(404, times=None, methods="GET")
    with pytest.raises(BlockNotFound) as info:
        kc.get(loc)
    assert sleeps == [] and [count(s, "GET", loc.md5) for s in keep_cluster.servers] == [1, 1, 1]
    assert loc.md5 in str(info.value)


def test_fail_429_with_retry_after_makes_the_client_wait(keep_cluster, stored, sleeps):
    kc, loc, data, _ = stored
    for server in keep_cluster.servers:
        server.faults.fail(429, times=1, methods="GET", retry_after=3)
    assert kc.get(loc) == data
    assert sleeps and sleeps[0] >= 3


def test_fail_on_put_at_the_top_ranked_service_is_routed_around_without_duplicates(keep_cluster, sleeps):
    kc = keep_cluster.client(timeout=FAST, retries=Retry(total=3), sleep=sleeps)
    data = os.urandom(5000)
    loc = Locator.for_data(data)
    order = ranked(keep_cluster, loc, kc)
    keep_cluster.servers[order[0]].faults.fail(500, times=None, methods="PUT")
    kc.put(data, copies=2)
    assert sorted(keep_cluster.holders(loc)) == sorted(order[1:3])
    for i in order[1:3]:
        assert count(keep_cluster.servers[i], "PUT", loc.md5) == 1, "no second PUT to a confirmed service"
    kc.close()


@pytest.mark.wall_clock  # the fault's effect is time itself (a lower bound: it cannot flake)
def test_delay_slows_the_answer_but_it_arrives(keep_cluster, stored):
    kc, loc, data, order = stored
    keep_cluster.servers[order[0]].faults.delay(0.5, methods="GET", block=loc.md5)
    start = time.monotonic()
    assert kc.get(loc) == data
    assert time.monotonic() - start >= 0.5
    assert keep_cluster.servers[order[0]].requests[-1].fault == "delay"


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_throttle_below_min_bandwidth_fails_over_in_bounded_time(keep_cluster, stored):
    kc, loc, data, order = stored
    keep_cluster.servers[order[0]].faults.throttle(4000, methods="GET", block=loc.md5)
    start = time.monotonic()
    assert kc.get(loc) == data
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 6, elapsed  # read=2 s below 32 KiB/s, then the second replica
    assert count(keep_cluster.servers[order[1]], "GET", loc.md5, 200) == 1


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_stall_on_head_times_out_and_the_next_service_answers(keep_cluster, stored):
    kc, loc, _, order = stored
    keep_cluster.servers[order[0]].faults.stall(4, methods="HEAD", block=loc.md5)  # twice the read timeout
    start = time.monotonic()
    assert kc.head(loc) is True
    assert time.monotonic() - start < 6


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_stall_everywhere_on_head_is_a_read_error_in_bounded_time(keep_cluster, stored):
    _kc, loc, _, _ = stored
    for server in keep_cluster.servers:
        server.faults.stall(3, times=None, methods="HEAD")  # three times the read timeout
    quick = keep_cluster.client(timeout=Timeout(connect=1, read=1), retries=0)
    start = time.monotonic()
    with pytest.raises(ReadError) as info:
        quick.head(loc)
    assert time.monotonic() - start < 6
    assert loc.md5 in str(info.value)
    quick.close()


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_corrupt_or_truncated_bodies_are_never_returned(keep_cluster, stored, fault):
    kc, loc, data, order = stored
    getattr(keep_cluster.servers[order[0]].faults, fault)(block=loc.md5)
    assert kc.get(loc) == data
    assert keep_cluster.servers[order[0]].requests[-1].fault == fault
    assert count(keep_cluster.servers[order[1]], "GET", loc.md5, 200) == 1


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_bad_body_from_every_replica_is_a_read_error_not_wrong_bytes(keep_cluster, stored, fault):
    kc, loc, _, _ = stored
    for server in keep_cluster.servers:
        getattr(server.faults, fault)(times=None)
    with pytest.raises(ReadError) as info:
        kc.get(loc)
    assert not isinstance(info.value, BlockNotFound)


def test_drop_is_a_connection_failure_that_is_retried(keep_cluster, stored):
    kc, loc, data, order = stored
    # times=None: libcurl itself retries a request once when a reused connection dies
    # before any answer, so a single drop is absorbed below the client.
    keep_cluster.servers[order[0]].faults.drop(times=None, methods="GET", block=loc.md5)
    assert kc.get(loc) == data
    assert kc.stats().failures.get(keep_cluster.urls[order[0]], 0) >= 1
    assert keep_cluster.servers[order[0]].requests[-1].fault == "drop"
    assert count(keep_cluster.servers[order[1]], "GET", loc.md5, 200) == 1


def test_full_volume_answers_507_and_the_client_writes_elsewhere_once(keep_cluster, sleeps):
    kc = keep_cluster.client(timeout=FAST, retries=Retry(total=3), sleep=sleeps)
    data = os.urandom(7000)
    loc = Locator.for_data(data)
    order = ranked(keep_cluster, loc, kc)
    keep_cluster.servers[order[0]].faults.full()
    kc.put(data, copies=2)
    assert count(keep_cluster.servers[order[0]], "PUT", loc.md5, 507) == 1, "507 is not retried"
    assert sorted(keep_cluster.holders(loc)) == sorted(order[1:3])
    kc.close()


def test_stop_and_restart_a_server(keep_cluster, stored):
    kc, loc, data, order = stored
    top = keep_cluster.servers[order[0]]
    top.stop()
    assert kc.get(loc) == data  # from the second replica
    top.start()
    keep_cluster.servers[order[1]].stop()
    assert kc.get(loc) == data  # the restarted server is back on the same port
    assert count(top, "GET", loc.md5, 200) >= 1


def test_faults_are_consumed_in_order_and_can_be_cleared(keep_server):
    plan = keep_server.faults
    plan.fail(500, times=2, methods="GET")
    plan.delay(0.1, times=None)
    assert plan.take("GET", None).kind == "status"
    assert plan.take("PUT", None).kind == "delay"
    assert plan.take("GET", None).kind == "status"
    assert plan.take("GET", None).kind == "delay"
    plan.clear()
    assert plan.take("GET", None) is None
    with pytest.raises(ValueError, match="GET HEAD PUT"):
        plan.fail(500, methods="POST")


def test_hold_keeps_requests_at_a_gate_until_it_opens(keep_server):
    from concurrent.futures import ThreadPoolExecutor

    from keepstore import KeepClient
    from keepstore.server.faults import Gate

    gate = Gate()
    keep_server.faults.hold(gate, times=2, methods="GET")
    with KeepClient([keep_server.url], copies=1, retries=0) as kc, ThreadPoolExecutor(2) as pool:
        loc = kc.put(b"held")
        reads = [pool.submit(kc.get, loc) for _ in range(2)]
        gate.wait_for(2)  # both GETs are at the server together, neither answered
        assert not any(r.done() for r in reads) and keep_server.in_flight == 2
        gate.open()
        assert [r.result(timeout=10) for r in reads] == [b"held", b"held"]
    assert (gate.peak, gate.arrived, gate.waiting) == (2, 2, 0)
    assert [r.fault for r in keep_server.requests if r.method == "GET"] == ["hold", "hold"]
    with pytest.raises(TimeoutError, match="0 request"):
        Gate().wait_for(1, timeout=0.01)
    with pytest.raises(ValueError, match="needs a gate"):
        keep_server.faults.add(Fault(FaultKind.HOLD, frozenset({"GET"})))


def test_hold_with_a_timeout_lets_the_request_go_on_by_itself(keep_server):
    from keepstore import KeepClient
    from keepstore.server.faults import Gate

    gate = Gate()  # never opened
    keep_server.faults.hold(gate, methods="PUT", timeout=0.05)
    with KeepClient([keep_server.url], copies=1, retries=0) as kc:
        assert kc.get(kc.put(b"went on")) == b"went on"
    assert (gate.arrived, gate.waiting) == (1, 0)
