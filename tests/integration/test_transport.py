"""CurlTransport against loopback servers, and the MockTransport test double."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse

from keepstore import Timeout
from keepstore.server import KeepServer
from keepstore.server.faults import Gate
from keepstore.transport import CurlTransport, Headers, MockTransport, Request, Response, TransportError
from keepstore.transport.curl import default_ca_file

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
FAST = Timeout(connect=1, read=1, min_bandwidth=100_000)


@pytest.fixture
def transport() -> Iterator[CurlTransport]:
    with CurlTransport(pool_size=4) as t:
        yield t


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KeepServer]:
    with KeepServer([tmp_path / "volume"], fsync=False) as s:
        yield s


def _put(server: KeepServer, data: bytes) -> str:
    """Store *data* on *server* directly (not through the transport under test); its URL."""
    md5 = hashlib.md5(data).hexdigest()
    server.blocks.store(md5, len(data), [data], ())
    return f"{server.url}{md5}+{len(data)}"


def _client_ports(server: KeepServer) -> set[int]:
    """This process's local ports of its open TCP connections to *server* (from the OS)."""
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == server.port and c.status == psutil.CONN_ESTABLISHED}


def test_get_returns_body_and_its_md5(transport: CurlTransport, server: KeepServer) -> None:
    data = bytes(range(256)) * 4096
    response = transport.request(Request("GET", _put(server, data), expected_size=len(data)))
    assert response.status == 200 and response.body == data
    assert response.body_md5 == hashlib.md5(data).hexdigest()
    assert isinstance(response.body, bytes)


def test_get_of_a_longer_body_than_expected_is_rejected(transport: CurlTransport, server: KeepServer) -> None:
    url = _put(server, b"x" * 1000)
    with pytest.raises(TransportError, match="longer than the expected 10 bytes"):
        transport.request(Request("GET", url, expected_size=10))


def test_error_status_is_a_response_not_an_exception(transport: CurlTransport, server: KeepServer) -> None:
    response = transport.request(Request("GET", server.url + "acbd18db4cc2f85cedef654fccc4a4d8+3", expected_size=3))
    assert response.status == 404 and response.body_md5 is None


def test_put_sends_memoryview_body_without_expect_continue(transport: CurlTransport, server: KeepServer,
                                                           httpserver: HTTPServer) -> None:
    data = bytearray(b"abc" * 500_000)
    md5 = hashlib.md5(data).hexdigest()
    headers = Headers({"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "req-0123456789abcdefghij"})
    response = transport.request(Request("PUT", server.url + md5, headers, memoryview(data)[:]))
    assert response.status == 200 and response.body.startswith(md5.encode())
    found = server.find(md5, len(data))
    assert found is not None and found.path.read_bytes() == data
    # The raw request, as a plain HTTP server saw it:
    httpserver.expect_request(f"/{md5}", method="PUT").respond_with_data(f"{md5}+{len(data)}\n")
    transport.request(Request("PUT", httpserver.url_for(f"/{md5}"), headers, memoryview(data)[:]))
    ((request, _),) = httpserver.log
    assert "Expect" not in request.headers and request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Length"] == str(len(data)) and request.get_data() == data


@pytest.mark.parametrize("make", [
    lambda: memoryview(b""),
    lambda: memoryview(bytes(range(256)) * 16),  # a whole bytes object: handed to libcurl uncopied
    lambda: memoryview(bytearray(range(256)) * 300)[100:4196],  # a slice of a bigger buffer
    lambda: memoryview(b"w" * (64 << 10)),  # the largest body sent whole (with the head)
    lambda: memoryview(b"r" * ((64 << 10) + 1)),  # the smallest read by callback
], ids=["empty", "bytes", "slice", "64KiB", "64KiB+1"])
def test_put_bodies_of_every_size_arrive_whole_and_untyped(transport: CurlTransport, httpserver: HTTPServer,
                                                           make: Callable[[], memoryview]) -> None:
    body = make()
    md5 = hashlib.md5(body).hexdigest()
    httpserver.expect_request(f"/{md5}", method="PUT").respond_with_data(f"{md5}+{body.nbytes}\n")
    response = transport.request(Request("PUT", httpserver.url_for(f"/{md5}"), body=body))
    assert response.status == 200
    ((request, _),) = httpserver.log
    assert request.method == "PUT" and request.get_data() == body.tobytes()
    assert request.headers["Content-Length"] == str(body.nbytes)
    assert "Content-Type" not in request.headers and "Expect" not in request.headers


def test_a_put_after_the_server_closed_the_kept_alive_connection_is_sent_whole_again() -> None:
    """The server answers each PUT and then closes the connection without saying so: the next
    PUT (small, sent with its head; large, read by callback) reaches it whole on a new one."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        for _ in range(4):
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as f:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += f.readline()
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                received.append(f.read(length))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            # closed here, kept-alive as far as the client knows

    with ThreadPoolExecutor(1) as pool, CurlTransport(pool_size=1) as transport:
        served = pool.submit(serve)
        bodies = [b"a" * 4096, b"b" * 4096, b"c" * (1 << 20), b"d" * (1 << 20)]
        for body in bodies:
            url = f"http://127.0.0.1:{port}/{hashlib.md5(body).hexdigest()}"
            assert transport.request(Request("PUT", url, body=memoryview(body), timeout=FAST)).status == 200
        served.result(timeout=30)
    listener.close()
    assert received == bodies


def test_response_headers_are_case_insensitive(transport: CurlTransport, server: KeepServer) -> None:
    md5 = hashlib.md5(b"foo").hexdigest()
    response = transport.request(Request("PUT", server.url + md5, body=memoryview(b"foo")))
    assert response.headers["x-keep-replicas-stored"] == response.headers["X-KEEP-REPLICAS-STORED"] == "1"


def test_handles_are_reused_across_requests(transport: CurlTransport, server: KeepServer) -> None:
    url = _put(server, b"foo")
    ports = set()
    for _ in range(5):
        assert transport.request(Request("GET", url, expected_size=3)).status == 200
        ports |= _client_ports(server)
    assert len(ports) == 1, "keep-alive: all five requests on one connection"
    assert [r.status for r in server.requests] == [200] * 5


def test_head_reads_no_body(transport: CurlTransport, server: KeepServer) -> None:
    url = _put(server, b"foo")
    response = transport.request(Request("HEAD", url))
    assert response.status == 200 and response.body == b""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_a_connect_error_without_the_token(transport: CurlTransport) -> None:
    url = f"http://127.0.0.1:{_free_port()}/acbd18db4cc2f85cedef654fccc4a4d8+3"
    with pytest.raises(TransportError) as info:
        transport.request(Request("GET", url, Headers({"Authorization": f"Bearer {TOKEN}"}), expected_size=3))
    assert info.value.connect and not info.value.timeout
    assert "secret123" not in str(info.value) and "connection refused" in str(info.value)


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_stalled_head_times_out_in_bounded_time(transport: CurlTransport, server: KeepServer) -> None:
    url = _put(server, b"foo")
    server.faults.stall(3, methods="HEAD")  # three times the read timeout
    start = time.monotonic()
    with pytest.raises(TransportError) as info:
        transport.request(Request("HEAD", url, timeout=FAST))
    assert info.value.timeout and not info.value.connect
    # The timeout fired before the stall ended (the HEAD would then have succeeded); the bound
    # is a hang guard with room for a busy machine.
    assert time.monotonic() - start < 8


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_drip_below_min_bandwidth_fails_in_bounded_time(transport: CurlTransport, server: KeepServer) -> None:
    data = b"d" * 200_000
    url = _put(server, data)
    server.faults.throttle(10_000, methods="GET")  # 10 kB/s against a 100 kB/s floor
    start = time.monotonic()
    with pytest.raises(TransportError, match="slower than 100000 B/s") as info:
        transport.request(Request("GET", url, expected_size=len(data), timeout=FAST))
    assert info.value.timeout
    assert time.monotonic() - start < 10  # the whole drip takes 20 s


def test_truncated_body_is_a_transport_error(transport: CurlTransport, server: KeepServer) -> None:
    url = _put(server, b"t" * 10_000)
    server.faults.truncate()
    with pytest.raises(TransportError, match="truncated"):
        transport.request(Request("GET", url, expected_size=10_000))


def test_slow_but_adequate_stream_succeeds(transport: CurlTransport, httpserver: HTTPServer) -> None:
    # 50 kB/s in pieces 0.5 s apart, for 4 s: longer than the 3 s window the floor is measured
    # over (so the floor is checked), with gaps 2.5 s short of it (room for a busy machine).
    def slow(request: WRequest) -> WResponse:
        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                time.sleep(0.5)  # a slow peer (the behaviour under test), not synchronisation
                yield b"z" * 25_000

        return WResponse(chunks(), headers={"Content-Length": "200000"})

    httpserver.expect_request("/slow").respond_with_handler(slow)
    response = transport.request(Request("GET", httpserver.url_for("/slow"), expected_size=200_000,
                                         timeout=Timeout(connect=1, read=3, min_bandwidth=10_000)))
    assert response.status == 200 and len(response.body) == 200_000


def test_ca_file_defaults_to_an_existing_bundle() -> None:
    assert Path(default_ca_file({})).is_file()
    assert CurlTransport().ca_file == default_ca_file()


def test_insecure_warns() -> None:
    with pytest.warns(UserWarning, match="verification is disabled"):
        CurlTransport(insecure=True).close()


def test_https_with_the_server_ca_and_rejected_without(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.expect_request("/ok").respond_with_data("ok")
    server.start()
    try:
        with CurlTransport(ca_file=str(cert)) as trusted:
            assert trusted.request(Request("GET", server.url_for("/ok"))).body == b"ok"
        with CurlTransport() as system, pytest.raises(TransportError):
            system.request(Request("GET", server.url_for("/ok")))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with CurlTransport(insecure=True) as insecure:
                assert insecure.request(Request("GET", server.url_for("/ok"))).body == b"ok"
    finally:
        server.stop()


def test_closed_transport_refuses_requests(server: KeepServer) -> None:
    t = CurlTransport()
    t.close()
    with pytest.raises(TransportError, match="closed"):
        t.request(Request("GET", server.url))


def test_request_repr_hides_the_authorization_header() -> None:
    request = Request("GET", "http://h/", {"Authorization": f"Bearer {TOKEN}"})
    assert "secret123" not in repr(request) and "***" in repr(request)


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert Response(429, {"Retry-After": "3"}).retry_after() == 3.0
    at = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert Response(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after(now=at - 7) == 7.0
    assert Response(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after(now=at + 60) == 0.0
    assert Response(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}).retry_after(now=at - 1) == 1.0
    for junk in ("", "soon", "-1", "nan", "Wed, 99 Foo 2015"):
        assert Response(429, {"Retry-After": junk}).retry_after() is None, junk
    assert Response(429).retry_after() is None


def test_mock_transport_calls_the_handler_and_records_requests() -> None:
    mock = MockTransport(lambda r: Response(200, {"X-A": "1"}, b"hi"))
    response = mock.request(Request("GET", "http://h/x", expected_size=2))
    assert response.body == b"hi" and mock.requests[0].url == "http://h/x"


def test_mock_transport_rejects_long_bodies_like_curl() -> None:
    mock = MockTransport(lambda r: Response(200, body=b"toolong"))
    with pytest.raises(TransportError):
        mock.request(Request("GET", "http://h/x", expected_size=3))


def test_mock_transport_handler_may_raise_transport_errors() -> None:
    def refuse(request: Request) -> Response:
        raise TransportError("connection refused", url=request.url, connect=True)

    with pytest.raises(TransportError):
        MockTransport(refuse).request(Request("GET", "http://h/"))


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a new connect times out (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.settimeout(0.3)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:  # the queue is full: what we wanted
                break
        else:
            pytest.skip("the kernel accepted every connection; cannot make a connect time out")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_connect_timeout_is_reported_as_a_connect_failure(transport: CurlTransport, full_backlog: int) -> None:
    timeout = Timeout(connect=0.2, read=5, min_bandwidth=1)
    with pytest.raises(TransportError) as caught:
        transport.request(Request("HEAD", f"http://127.0.0.1:{full_backlog}/x", timeout=timeout))
    assert caught.value.connect and caught.value.timeout
    assert "connect timed out" in caught.value.reason


def test_a_stall_on_a_reused_connection_is_not_a_connect_failure(transport: CurlTransport, server: KeepServer) -> None:
    url = _put(server, b"reused")
    assert transport.request(Request("HEAD", url, timeout=FAST)).status == 200
    first = _client_ports(server)
    assert len(first) == 1  # one kept-alive connection
    gate = Gate()
    server.faults.hold(gate, methods="HEAD", timeout=3)  # longer than the 1 s read timeout
    with ThreadPoolExecutor(1) as pool:
        head = pool.submit(transport.request, Request("HEAD", url, timeout=FAST))
        gate.wait_for(1)
        assert _client_ports(server) == first, "the second HEAD went over the first one's connection"
        with pytest.raises(TransportError) as caught:
            head.result(timeout=10)
        gate.open()
    assert caught.value.timeout and not caught.value.connect


def test_an_error_body_is_cut_at_its_limit(transport: CurlTransport, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/big-error").respond_with_data(b"e" * 100_000, status=500)
    response = transport.request(Request("GET", httpserver.url_for("/big-error"), expected_size=10, timeout=FAST))
    assert response.status == 500 and response.truncated and len(response.body) == 4096


def test_a_2xx_get_other_than_200_carries_the_block(transport: CurlTransport, httpserver: HTTPServer) -> None:
    body = b"non-authoritative"
    httpserver.expect_request("/b").respond_with_data(body, status=203)
    response = transport.request(Request("GET", httpserver.url_for("/b"), expected_size=len(body), timeout=FAST))
    assert response.status == 203 and response.body == body and response.body_md5 == hashlib.md5(body).hexdigest()
