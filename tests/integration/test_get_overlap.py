"""Large GETs hashed while they arrive: verified, failed over, cancelled, no thread left (real servers on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse

from keepstore import Locator
from keepstore.client import HedgePolicy
from keepstore.errors import ReadError
from keepstore.server import KeepServer
from keepstore.services import parse_services, probe_order
from keepstore.testing import KeepCluster, wait_until
from keepstore.transport import CurlTransport, Request, TransportError
from keepstore.transport.overlap import OVERLAP_MIN, overlap_supported

MiB = 1 << 20
LARGE = 2 * OVERLAP_MIN

pytestmark = pytest.mark.skipif(not overlap_supported(), reason="HashedBody needs CPython's ctypes")

# The two read paths: one request at a time (hedging off), and the transport's race (on, with a
# delay so long that it never hedges: the fault decides who answers).
READ_PATHS = {"one at a time": HedgePolicy(enabled=False), "raced": HedgePolicy(initial=5.0, floor=5.0, cap=5.0)}


def md5_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "keepstore-md5"]


def gets(server: KeepServer) -> int:
    return sum(1 for r in server.requests if r.method == "GET")


@pytest.fixture
def transport() -> Iterator[CurlTransport]:
    with CurlTransport(pool_size=4) as t:
        yield t


def on_both(cluster: KeepCluster, size: int) -> tuple[Locator, bytes, list[KeepServer]]:
    """A block of *size* on both servers of *cluster*; the servers in its probe order."""
    data = os.urandom(size)
    with cluster.client() as kc:
        loc = kc.put(data, copies=2)
    by_root = {server.url: server for server in cluster.servers}
    ranked = [by_root[s.root] for s in probe_order(loc, parse_services(cluster.urls))]
    for server in cluster.servers:
        server.requests.clear()
    return loc, data, ranked


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_corrupted_64_mib_replica_is_rejected_and_the_good_one_returned(
        keep_cluster_factory: Callable[..., KeepCluster], transport: CurlTransport, path: str) -> None:
    cluster = keep_cluster_factory(2)
    loc, data, (best, second) = on_both(cluster, 64 * MiB)
    best.faults.corrupt(times=1)
    with cluster.client(transport=transport, hedge=READ_PATHS[path], retries=0) as kc:
        assert kc.get(loc) == data
    assert (gets(best), gets(second)) == (1, 1)
    assert [r.fault for r in best.requests if r.method == "GET"] == ["corrupt"]
    assert transport.overlap.bodies == 2  # both bodies took the overlapped path
    assert md5_threads() == []


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_truncated_large_body_fails_over_to_the_next_replica(
        keep_cluster_factory: Callable[..., KeepCluster], transport: CurlTransport, path: str) -> None:
    cluster = keep_cluster_factory(2)
    loc, data, (best, second) = on_both(cluster, LARGE)
    best.faults.truncate(times=1)
    with cluster.client(transport=transport, hedge=READ_PATHS[path], retries=0) as kc:
        assert kc.get(loc) == data
    assert (gets(best), gets(second)) == (1, 1)
    assert transport.overlap.bodies == 2
    assert md5_threads() == []


def test_a_corrupted_only_replica_is_a_read_error_and_nothing_is_cached(
        keep_cluster_factory: Callable[..., KeepCluster], transport: CurlTransport) -> None:
    from keepstore.cache import MemoryBlockCache

    cluster = keep_cluster_factory(2)
    data = os.urandom(LARGE)
    with cluster.client() as kc:
        loc = kc.put(data, copies=1)
    (holder,) = [cluster.servers[i] for i in cluster.holders(loc)]
    holder.faults.corrupt(times=1)
    with cluster.client(transport=transport, retries=0, cache=MemoryBlockCache(4 * LARGE)) as kc:
        with pytest.raises(ReadError, match="checksum mismatch"):
            kc.get(loc)
        assert kc.get(loc) == data  # asked again: the bad body was not kept
        assert kc.get(loc) == data  # and now the good one is
    assert gets(holder) == 2
    assert md5_threads() == []


def test_the_overlapped_path_is_taken_from_the_threshold_up_only(
        keep_cluster_factory: Callable[..., KeepCluster], transport: CurlTransport) -> None:
    cluster = keep_cluster_factory(2)
    # Raced, as by default, but never hedged: a hedge beside a slow first byte could receive a
    # second body.
    with cluster.client(transport=transport, hedge=READ_PATHS["raced"]) as kc:
        small, below, at = (kc.put(os.urandom(size)) for size in (4096, OVERLAP_MIN - 1, OVERLAP_MIN))
        kc.get(small)
        kc.get(below)
        assert transport.overlap.bodies == 0
        kc.get(at)
        assert transport.overlap.bodies == 1
    if len(os.sched_getaffinity(0)) > 1:
        assert transport.overlap.threads >= 1 and transport.overlap.inline == 0


def test_no_hashing_thread_outlives_many_gets_or_failing_ones(
        keep_cluster_factory: Callable[..., KeepCluster], transport: CurlTransport) -> None:
    cluster = keep_cluster_factory(2)
    loc, data, servers = on_both(cluster, LARGE)
    before = set(threading.enumerate())
    with cluster.client(transport=transport, retries=0) as kc:
        for _ in range(12):
            assert kc.get(loc) == data
            assert md5_threads() == []
        for fault in ("corrupt", "truncate"):
            for server in servers:
                getattr(server.faults, fault)(times=1)
            with pytest.raises(ReadError):
                kc.get(loc)
            assert md5_threads() == []
    assert transport.overlap.bodies == 12 + 2 * 2
    # The client's own threads ended at close (the servers' connection threads end on their own time).
    assert [t for t in threading.enumerate() if t not in before and t.name.startswith("keepstore")] == []


def test_a_longer_body_than_the_block_is_refused_and_leaves_no_thread(
        transport: CurlTransport, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/long").respond_with_data(b"x" * (LARGE + 1))
    with pytest.raises(TransportError, match=f"longer than the expected {LARGE} bytes"):
        transport.request(Request("GET", httpserver.url_for("/long"), expected_size=LARGE))
    assert transport.overlap.bodies == 1 and md5_threads() == []


def test_a_complete_but_short_body_is_answered_as_it_came(transport: CurlTransport, httpserver: HTTPServer) -> None:
    data = os.urandom(LARGE - 5)
    httpserver.expect_request("/short").respond_with_data(data)
    response = transport.request(Request("GET", httpserver.url_for("/short"), expected_size=LARGE))
    assert response.body == data and response.body_md5 == hashlib.md5(data).hexdigest()
    assert md5_threads() == []


def test_a_get_cancelled_mid_body_ends_its_hashing_thread(transport: CurlTransport, httpserver: HTTPServer) -> None:
    sent_half = threading.Event()
    finish = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"h" * (LARGE // 2)
        sent_half.set()
        finish.wait(30)  # the client gives up meanwhile
        yield b"t" * (LARGE // 2)

    def handler(_: WRequest) -> WResponse:
        return WResponse(body(), headers={"Content-Length": str(LARGE)}, direct_passthrough=True)

    httpserver.expect_request("/slow").respond_with_handler(handler)
    cancel = threading.Event()
    errors: list[TransportError] = []

    def get() -> None:
        try:
            transport.request(Request("GET", httpserver.url_for("/slow"), expected_size=LARGE, cancel=cancel))
        except TransportError as exc:
            errors.append(exc)

    reader = threading.Thread(target=get)
    reader.start()
    try:
        assert sent_half.wait(30)
        wait_until(lambda: transport.overlap.threads >= 1, what="the hashing thread to start")
        cancel.set()
        reader.join(30)
        assert not reader.is_alive()
    finally:
        finish.set()
    assert len(errors) == 1 and errors[0].cancelled
    assert md5_threads() == []


def test_a_large_get_holds_one_copy_of_the_block(keep_cluster_factory: Callable[..., KeepCluster],
                                                 transport: CurlTransport) -> None:
    import tracemalloc

    cluster = keep_cluster_factory(2)
    loc, data, _ = on_both(cluster, 4 * LARGE)
    with cluster.client(transport=transport) as kc:
        kc.get(loc)  # connections open, imports done
        tracemalloc.start()
        try:
            got = kc.get(loc)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got == data and transport.overlap.bodies == 2
    assert peak < 1.25 * len(data)  # the bytes returned are the buffer received into
