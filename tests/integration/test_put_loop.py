"""The put loop: small blocks' `put_async` puts run on one thread and one curl multi handle,
many at once; a put its first round did not finish goes on with retries; cancel and close end
every queued and running put; without a transport that can overlap, the task pool runs them."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, wait

import pytest

from keepstore import Cancelled, KeepClient, KeepError, Locator, MockTransport, NoServicesError, Retry
from keepstore.server import KeepServer
from keepstore.server.faults import Gate
from keepstore.services import Service
from keepstore.store import PutResult
from keepstore.transport import Headers, Request, Response


def disk(servers: list[KeepServer], read_only: bool = False) -> list[Service]:
    return [Service(f"zzzzz-bi6l4-{i:015d}", s.url, "disk", read_only=read_only) for i, s in enumerate(servers)]


def threads_named(prefix: str) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


def holders(servers: list[KeepServer], data: bytes) -> list[int]:
    md5 = hashlib.md5(data).hexdigest()
    found = []
    for i, server in enumerate(servers):
        block = server.find(md5, len(data))
        if block is not None:
            assert block.path.read_bytes() == data
            found.append(i)
    return found


def test_small_puts_run_on_one_loop_thread_two_puts_each(servers: list[KeepServer]) -> None:
    elsewhere = threads_named("keepstore-")  # another test's client, not yet collected
    blocks = [os.urandom(4096) + i.to_bytes(4, "big") for i in range(200)]
    with KeepClient(services=disk(servers), token="t", copies=2, threads=4) as kc:
        futures = [kc.put_block_async(data) for data in blocks]
        results: list[PutResult] = [f.result(timeout=60) for f in futures]
        started = threads_named("keepstore-") - elsewhere
        assert [t.name for t in started] == ["keepstore-puts"]  # no task or replica pool thread
        assert kc.stats().requests == 400  # one PUT per copy, nothing retried
        assert kc.stats().retries == 0
    for data, result in zip(blocks, results, strict=True):
        assert result.locator.bare() == Locator.for_data(data)
        assert result.replicas == 2
        assert len(holders(servers, data)) == 2


def test_put_async_gives_the_locator_and_bytes_round_trip(servers: list[KeepServer]) -> None:
    with KeepClient(services=disk(servers), token="t", copies=1) as kc:
        loc = kc.put_async(bytearray(b"a bytearray")).result(timeout=30)
        assert isinstance(loc, Locator) and loc.bare() == Locator.for_data(b"a bytearray")
        assert kc.get(loc) == b"a bytearray"
        assert kc.put_async(memoryview(b"xxview-of-bytes")[2:]).result(timeout=30).bare() == \
            Locator.for_data(b"view-of-bytes")


def test_a_new_put_starts_while_the_running_ones_wait(servers: list[KeepServer]) -> None:
    held = os.urandom(4096)
    gate = Gate()
    for server in servers:
        server.faults.hold(gate, methods="PUT", times=None, block=hashlib.md5(held).hexdigest(), timeout=60.0)
    with KeepClient(services=disk(servers), token="t", copies=2, threads=4) as kc:
        try:
            slow = kc.put_async(held)
            gate.wait_for(2, timeout=30)  # both copies of the first put are at the servers
            quick = kc.put_async(b"not held")
            assert quick.result(timeout=30).bare() == Locator.for_data(b"not held")
            assert not slow.done()
        finally:
            gate.open()
        assert slow.result(timeout=30).bare() == Locator.for_data(held)


def test_no_more_than_threads_puts_run_at_once(servers: list[KeepServer]) -> None:
    gate = Gate()
    for server in servers:
        server.faults.hold(gate, methods="PUT", times=None, timeout=60.0)
    blocks = [f"block {i}".encode() for i in range(6)]
    with KeepClient(services=disk(servers), token="t", copies=1, threads=2) as kc:
        try:
            futures = [kc.put_async(data) for data in blocks]
            gate.wait_for(2, timeout=30)
            assert sum(f.running() for f in futures) == 2
            assert futures[-1].cancel() is True  # still queued
        finally:
            gate.open()
        done, _ = wait(futures, timeout=30)
        assert len(done) == 6
        assert gate.peak <= 2
    assert holders(servers, blocks[-1]) == []
    assert all(len(holders(servers, data)) == 1 for data in blocks[:-1])


def test_a_put_whose_first_round_failed_goes_on_with_retries(servers: list[KeepServer]) -> None:
    for server in servers:
        server.faults.fail(503, methods="PUT", times=1)
    waits: list[float] = []
    with KeepClient(services=disk(servers), token="t", copies=3, retries=Retry(total=3),
                    sleep=waits.append) as kc:
        result = kc.put_block_async(b"retried").result(timeout=30)
        assert result.replicas == 3
        assert kc.stats().retries == 1
        assert kc.stats().requests == 6  # three refused, three stored
    assert len(waits) == 1  # the backoff between the rounds, through the client's sleep
    assert holders(servers, b"retried") == [0, 1, 2]


def test_a_put_that_cannot_succeed_fails_with_the_write_error(servers: list[KeepServer]) -> None:
    for server in servers:
        server.faults.fail(403, methods="PUT", times=None)
    with KeepClient(services=disk(servers), token="t", copies=2, retries=Retry(total=2), sleep=lambda s: None) as kc:
        error = kc.put_async(b"refused").exception(timeout=30)
    assert isinstance(error, KeepError) and "403" in str(error) and "wanted 2 replicas, stored 0" in str(error)


def test_no_writable_service_is_the_futures_error(servers: list[KeepServer]) -> None:
    with KeepClient(services=disk(servers, read_only=True), token="t") as kc:
        assert isinstance(kc.put_async(b"nowhere").exception(timeout=30), NoServicesError)


def test_close_finishes_every_queued_put(servers: list[KeepServer]) -> None:
    blocks = [os.urandom(1000) for _ in range(40)]
    kc = KeepClient(services=disk(servers), token="t", copies=2, threads=2)
    futures = [kc.put_async(data) for data in blocks]
    kc.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert all(len(holders(servers, data)) == 2 for data in blocks)
    with pytest.raises(KeepError, match="closed"):
        kc.put_async(b"after close")


def test_cancel_ends_running_and_queued_puts_and_close_returns(servers: list[KeepServer]) -> None:
    gate = Gate()
    for server in servers:
        server.faults.hold(gate, methods="PUT", times=None, timeout=60.0)
    kc = KeepClient(services=disk(servers), token="t", copies=2, threads=1)
    try:
        futures = [kc.put_async(f"cancelled {i}".encode()) for i in range(3)]
        gate.wait_for(2, timeout=30)
        kc.cancel()
        done, _ = wait(futures, timeout=30)
        assert len(done) == 3
        for future in futures:
            assert future.cancelled() or isinstance(future.exception(), (Cancelled, KeepError))
        assert isinstance(futures[0].exception(), Cancelled)  # the running one: aborted, said so
    finally:
        gate.open()
        kc.close()


def test_a_transport_that_cannot_overlap_runs_them_on_the_task_pool() -> None:
    stored: dict[str, bytes] = {}

    def handler(request: Request) -> Response:
        body = bytes(request.body or b"")
        stored[request.url] = body
        return Response(200, Headers({}), f"{hashlib.md5(body).hexdigest()}+{len(body)}".encode())

    transport = MockTransport(handler)
    with KeepClient(services=["http://127.0.0.1:1/"], token="t", copies=1, transport=transport) as kc:
        futures: list[Future[Locator]] = [kc.put_async(f"mock {i}".encode()) for i in range(5)]
        assert [f.result(timeout=30).bare() for f in futures] == [Locator.for_data(f"mock {i}".encode())
                                                                  for i in range(5)]
    assert sorted(stored.values()) == sorted(f"mock {i}".encode() for i in range(5))


def test_a_done_callback_may_put_and_wait(servers: list[KeepServer]) -> None:
    inner: list[tuple[str, Locator]] = []
    gate = Gate()  # holds the outer put until its callback is attached, so the loop runs it
    for server in servers:
        server.faults.hold(gate, methods="PUT", times=None, block=hashlib.md5(b"outer").hexdigest(), timeout=60.0)

    def again(future: Future[Locator]) -> None:
        inner.append((threading.current_thread().name, kc.put_async(b"from a callback").result(timeout=20)))

    with KeepClient(services=disk(servers), token="t", copies=2) as kc:
        outer = kc.put_async(b"outer")
        try:
            gate.wait_for(2, timeout=30)
            outer.add_done_callback(again)
        finally:
            gate.open()
        outer.result(timeout=30)
        assert kc.put_async(b"after").result(timeout=30).bare() == Locator.for_data(b"after")
    assert [(name, loc.bare()) for name, loc in inner] == [("keepstore-puts", Locator.for_data(b"from a callback"))]
