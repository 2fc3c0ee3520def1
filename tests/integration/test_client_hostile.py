"""KeepClient against hostile loopback servers: endless answers, oversized PUT answers, drips."""

from __future__ import annotations

import resource
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keepstore import KeepClient, Locator, Service, Timeout, WriteError, probe_order
from keepstore.server import KeepServer
from keepstore.transport import CurlTransport, Request

MiB = 1 << 20
CHUNK = 64 << 10
SEND_CAP = 256 * MiB  # no hostile loop sends more than this, whatever the client does

Behaviour = Callable[["Hostile", socket.socket, str], None]


class Hostile:
    """A raw-socket HTTP server on 127.0.0.1 that reads one request per connection and answers
    with *behaviour*; ``sent`` counts the body bytes it got into the socket."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.sent = 0
        self.requests: list[str] = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            text, _, rest = head.partition(b"\r\n\r\n")
            lines = text.decode("latin-1").split("\r\n")
            method = lines[0].split()[0]
            length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                           if line.lower().startswith("content-length:")), 0)
            got = len(rest)
            while got < length:
                data = conn.recv(min(65536, length - got))
                if not data:
                    return
                got += len(data)
            with self.lock:
                self.requests.append(method)
            try:
                self.behaviour(self, conn, method)
            except OSError:  # the client hung up: what it is meant to do
                pass

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.lock:
            self.sent += len(data)

    def endless(self, conn: socket.socket, wait: float = 0.0) -> None:
        """Body bytes until the client hangs up (or SEND_CAP); *wait* seconds between chunks."""
        chunk = b"x" * CHUNK
        while self.sent < SEND_CAP and not self.stopped.is_set():
            self.send(conn, chunk)
            if wait:
                self.stopped.wait(wait)

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Behaviour], Hostile]]:
    made: list[Hostile] = []

    def make(behaviour: Behaviour) -> Hostile:
        made.append(Hostile(behaviour))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def healthy(tmp_path: Path) -> Iterator[KeepServer]:
    with KeepServer([tmp_path / "healthy"], fsync=False) as server:
        yield server


def put_answered_with_a_gib(server: Hostile, conn: socket.socket, method: str) -> None:
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
    server.endless(conn)


def endless_500_at_40kb_s(server: Hostile, conn: socket.socket, method: str) -> None:
    server.send(conn, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1073741824\r\n\r\n")
    chunk = b"e" * 4000
    while server.sent < SEND_CAP and not server.stopped.is_set():
        server.send(conn, chunk)
        server.stopped.wait(0.1)  # 40 KB/s: above any sane min_bandwidth, so only a body limit helps


def drip_forever(server: Hostile, conn: socket.socket, method: str) -> None:
    """A 200 for a 4000-byte block, dripped a byte every 20 ms (above a 1 B/s minimum rate)."""
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n")
    while server.sent < 4000 and not server.stopped.is_set():
        server.send(conn, b"d")
        server.stopped.wait(0.02)


def _data_ranked_first(first: str, second: str) -> bytes:
    """Block data whose probe order (two URL services) puts *first* before *second*."""
    services = [Service.from_url(first, 0), Service.from_url(second, 1)]
    for n in range(1000):
        data = b"block %d" % n
        if probe_order(Locator.for_data(data), services)[0].root == services[0].root:
            return data
    raise AssertionError("no data ranked the hostile server first")


def test_a_put_answered_with_200_and_a_gib_body_is_cut_off_and_refused(hostile) -> None:
    server = hostile(put_answered_with_a_gib)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with KeepClient([server.url], retries=0) as kc, pytest.raises(WriteError, match="oversized body"):
        kc.put(b"a locator is under 200 bytes", copies=1)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert server.sent < 32 * MiB  # what socket buffers take before the client hangs up
    assert grown_mib < 64  # it was 4.1 GiB before the cap


def test_the_transport_keeps_only_the_start_of_an_oversized_put_answer(hostile) -> None:
    server = hostile(put_answered_with_a_gib)
    with CurlTransport() as transport:
        response = transport.request(Request("PUT", server.url + "x", body=memoryview(b"data"), body_limit=4096))
    assert response.status == 200 and response.truncated and len(response.body) == 4096


def test_an_endless_500_body_fails_over_to_the_healthy_replica(hostile, healthy: KeepServer) -> None:
    server = hostile(endless_500_at_40kb_s)
    data = _data_ranked_first(server.url, healthy.url)
    loc = Locator.for_data(data)
    healthy.blocks.store(loc.md5, loc.size, [data], ())
    with KeepClient([server.url, healthy.url], retries=0) as kc:
        assert kc.get(loc) == data
    assert server.requests == ["GET"]
    assert server.sent < 64 << 10  # the error body was dropped after its first 4 KiB


def test_an_endless_error_body_on_put_fails_over_too(hostile, healthy: KeepServer) -> None:
    server = hostile(endless_500_at_40kb_s)
    data = _data_ranked_first(server.url, healthy.url)
    with KeepClient([server.url, healthy.url], retries=0) as kc:
        result = kc.put_block(data, copies=1)
    assert result.services == (healthy.url,)
    assert server.sent < 64 << 10


def test_a_drip_above_the_minimum_rate_is_cut_off_at_the_deadline(hostile, healthy: KeepServer) -> None:
    server = hostile(drip_forever)
    data = b"y" * 4000
    services = [Service.from_url(server.url, 0), Service.from_url(healthy.url, 1)]
    loc = Locator.for_data(data)
    if probe_order(loc, services)[0].root != server.url:
        services.reverse()  # the dripping server must be asked first
    healthy.blocks.store(loc.md5, loc.size, [data], ())
    timeout = Timeout(connect=1, read=5, min_bandwidth=1, total=0.5)
    with KeepClient(services, retries=0, timeout=timeout) as kc:
        assert kc.get(loc) == data
    assert server.sent < 4000 + 100  # headers and part of the body, never the whole block


def test_the_default_deadline_covers_the_bytes_at_the_minimum_rate() -> None:
    timeout = Timeout(connect=2, read=10, min_bandwidth=1000)
    assert timeout.deadline(5000) == 2 + 10 + 5
    assert Timeout(total=3).deadline(10**9) == 3
