"""keep serve's quick GET (keepstore.server.quick): a small kept block answered in one pass, with
the same answer, record, log line, metrics and protections as the general path."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
from pathlib import Path

import pytest

from keepstore.locator import Locator, sign_locator
from keepstore.server import KeepServer
from keepstore.testing import wait_until

KEY, TOKEN = b"quick-signing-key", "quick-token-0123456789"


def _request(server: KeepServer, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _kept(server: KeepServer, data: bytes, headers: dict[str, str] | None = None) -> str:
    """Store *data* and GET it once, so its bytes are kept: the next GET is a quick one. Each
    request's slot is freed before the next is sent (a slot is given back after the answer is
    out, so with ``max_requests=1`` the next request could otherwise find it still taken)."""
    def ended() -> None:
        wait_until(lambda: server.admission.in_flight == 0, what="the request ended")

    md5 = hashlib.md5(data).hexdigest()
    status, _, _ = _request(server, "PUT", f"/{md5}", headers, data)
    assert status == 200
    ended()
    path = f"/{md5}+{len(data)}"
    if server.permissions.require_signatures:
        path = "/" + str(sign_locator(Locator(md5, len(data)), key=KEY, token=TOKEN))
    hits = server.blocks.verified.kept_hits
    for _ in range(2):
        assert _request(server, "GET", path, headers)[0] == 200
        ended()
    assert server.blocks.verified.kept_hits > hits  # kept: served from memory
    return path


@pytest.fixture
def server(tmp_path: Path):
    with KeepServer(tmp_path / "v", fsync=False) as s:  # one volume, given as a path
        yield s


@pytest.fixture
def signing(tmp_path: Path):
    with KeepServer([tmp_path / "v"], fsync=False, signing_key=KEY, require_signatures=True) as s:
        yield s


def test_a_kept_block_gets_the_answer_the_general_path_gives(server: KeepServer) -> None:
    data = os.urandom(4096)
    path = _kept(server, data)
    quick = _request(server, "GET", path)
    general = _request(server, "GET", path, {"Content-Length": "0"})  # a framing header: the general path
    assert quick[0] == general[0] == 200
    assert quick[2] == general[2] == data
    quick[1].pop("Date"), general[1].pop("Date")
    assert quick[1] == general[1] == {"Server": quick[1]["Server"], "Content-Length": "4096",
                                      "Content-Type": "application/octet-stream"}


def test_a_quick_get_is_recorded_logged_and_counted(server: KeepServer, caplog: pytest.LogCaptureFixture) -> None:
    data = os.urandom(5000)
    path = _kept(server, data)
    assert server.metrics is not None
    wait_until(lambda: server.admission.in_flight == 0, what="the warm-up GETs ended")
    before, sent = server.metrics.snapshot()[0].get(("GET", 200), 0), server.metrics.snapshot()[4]
    with caplog.at_level(logging.INFO, logger="keepstore.server.access"):
        status, _, body = _request(server, "GET", path, {"X-Request-Id": "quick-one"})
        # The record is there before the answer; it is final, and logged, once the request ends.
        assert server.requests[-1].request_id == "quick-one"
        wait_until(lambda: server.admission.in_flight == 0, what="the GET ended")
    assert (status, body) == (200, data)
    record = server.requests[-1]
    assert (record.method, record.path, record.status, record.bytes_out, record.request_id, record.fault) == (
        "GET", path, 200, 5000, "quick-one", None)
    assert record.seconds > 0
    lines = [r.getMessage() for r in caplog.records if r.name == "keepstore.server.access"]
    assert len(lines) == 1 and f'"GET {path}" 200 5000' in lines[0] and lines[0].endswith("quick-one")
    counts = server.metrics.snapshot()
    assert counts[0][("GET", 200)] == before + 1 and counts[4] == sent + 5000


def test_a_signed_quick_get_is_checked_as_any_other(signing: KeepServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    data = os.urandom(4096)
    path = _kept(signing, data, auth)
    assert _request(signing, "GET", path, auth)[::2] == (200, data)
    with caplog.at_level(logging.INFO, logger="keepstore.server.access"):
        assert _request(signing, "GET", path)[::2] == (401, b"401 no token\n")
        assert _request(signing, "GET", path, {"Authorization": "Bearer someone-else"})[::2] == (
            400, b"400 invalid signature\n")
        md5 = path[1:33]
        assert _request(signing, "GET", f"/{md5}+4096", auth)[::2] == (400, b"400 unsigned locator\n")
        expired = sign_locator(Locator(md5, 4096), key=KEY, token=TOKEN, expires_at=1_000_000_000)
        assert _request(signing, "GET", f"/{expired}", auth)[::2] == (401, b"401 expired signature\n")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert path[34:74] not in logged and TOKEN not in logged  # signatures masked, tokens never written


def test_a_fault_planned_applies_to_a_kept_block(server: KeepServer) -> None:
    data = os.urandom(4096)
    path = _kept(server, data)
    server.faults.fail(503, methods="GET", times=1)
    assert _request(server, "GET", path)[0] == 503
    assert _request(server, "GET", path)[::2] == (200, data)
    server.faults.clear()
    assert _request(server, "GET", path)[::2] == (200, data)


def test_a_full_server_answers_a_kept_block_503_until_a_slot_frees(tmp_path: Path) -> None:
    with KeepServer([tmp_path / "v"], fsync=False, max_requests=1) as server:
        data = os.urandom(4096)
        path = _kept(server, data)
        other = os.urandom(4096)
        wait_until(lambda: server.admission.in_flight == 0, what="the warm-up GETs ended")
        held = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:  # a PUT whose body has not all arrived holds the only slot
            held.sendall(f"PUT /{hashlib.md5(other).hexdigest()} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: 4096\r\n\r\n".encode() + other[:100])
            wait_until(lambda: server.admission.in_flight == 1, what="the PUT admitted")
            status, headers, _ = _request(server, "GET", path)
            assert (status, headers.get("Retry-After")) == (503, "1")
            held.sendall(other[100:])
            assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            held.close()
        wait_until(lambda: server.admission.in_flight == 0, what="the slot freed")
        assert _request(server, "GET", path)[::2] == (200, data)


def test_quick_gets_keep_the_connection_and_its_framing(server: KeepServer) -> None:
    data = os.urandom(4096)
    path = _kept(server, data)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(5):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, data)
        other = os.urandom(100)
        conn.request("PUT", f"/{hashlib.md5(other).hexdigest()}", body=other)  # the same connection
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read().startswith(hashlib.md5(other).hexdigest().encode())
    finally:
        conn.close()


def test_connection_close_is_honoured_on_a_quick_get(server: KeepServer) -> None:
    data = os.urandom(4096)
    path = _kept(server, data)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):  # the server closes after the answer
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close" in head and body == data


@pytest.mark.parametrize("suffix", ["+K@zzzzz", "+Rzzzzz-" + "0" * 40 + "@ffffffff"])
def test_a_locator_with_other_hints_is_answered_by_the_general_path(server: KeepServer, suffix: str) -> None:
    data = os.urandom(4096)
    path = _kept(server, data)
    assert _request(server, "GET", path + suffix)[::2] == (200, data)
    assert server.requests[-1].path.startswith(path)
