"""CurlTransport.pump against a real HTTP server: requests added while others run, each given
back once by index, a wait that `wake` ends from another thread, and a closed transport."""

from __future__ import annotations

import threading

from pytest_httpserver import HTTPServer

from keepstore.config import Timeout
from keepstore.transport import CurlTransport, Finished, Headers, Request


def get(url: str) -> Request:
    return Request("GET", url, Headers({}), timeout=Timeout(connect=5, read=10))


def drain(pump: object, want: int) -> list[Finished]:
    ended: list[Finished] = []
    while len(ended) < want:
        ended += pump.step(5.0)  # type: ignore[attr-defined]
    return ended


def test_requests_come_back_once_each_by_index(httpserver: HTTPServer) -> None:
    for name in ("a", "b", "c"):
        httpserver.expect_request(f"/{name}").respond_with_data(name * 3)
    with CurlTransport() as transport:
        starts: list[int] = []
        pump = transport.pump(starts.append)
        assert pump is not None
        try:
            first = pump.add(get(httpserver.url_for("/a")))
            second = pump.add(get(httpserver.url_for("/b")))
            assert pump.running == 2
            ended = drain(pump, 1)
            third = pump.add(get(httpserver.url_for("/c")))  # while the others may still run
            ended += drain(pump, 3 - len(ended))
            assert len({first, second, third}) == 3
            bodies = {f.position: f.response.body for f in ended if f.response is not None}
            assert bodies == {first: b"aaa", second: b"bbb", third: b"ccc"}
            assert sorted(starts) == sorted([first, second, third])
            assert pump.running == 0
            assert pump.step(0) == []
        finally:
            pump.close()


def test_wake_ends_a_wait_with_nothing_running() -> None:
    with CurlTransport() as transport:
        pump = transport.pump()
        assert pump is not None
        results: list[list[Finished]] = []
        stepper = threading.Thread(target=lambda: results.append(pump.step(None)))
        stepper.start()
        pump.wake()
        stepper.join(timeout=10)
        alive = stepper.is_alive()
        if alive:  # let the thread go before failing
            pump.wake()
            stepper.join()
        pump.close()
    assert not alive and results == [[]]


def test_a_request_after_the_transport_closed_fails_as_closed(httpserver: HTTPServer) -> None:
    transport = CurlTransport()
    pump = transport.pump()
    assert pump is not None
    transport.close()
    index = pump.add(get(httpserver.url_for("/never")))
    ended = drain(pump, 1)
    pump.close()
    assert ended[0].position == index and ended[0].error is not None
    assert "closed" in ended[0].error.reason
    assert len(httpserver.log) == 0
