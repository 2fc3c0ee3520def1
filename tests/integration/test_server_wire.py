"""keep serve, wire-exact with keepstore 3.x: storage classes, signature order, HTTP framing."""

from __future__ import annotations

import hashlib
import http.client
import socket
from pathlib import Path

import pytest

from keepstore import sign_locator
from keepstore.server import KeepServer, parse_volume

KEY = "testkey0123456789"
TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
FOO_MD5 = "acbd18db4cc2f85cedef654fccc4a4d8"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _request(server: KeepServer, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _raw(server: KeepServer, data: bytes) -> tuple[bytes, bool]:
    """Send *data*; the answer, and whether the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), b"0"))
        while len(rest) < length:
            rest += sock.recv(4096)
        # Open or closed? A second request tells at once: answered on an open connection, met
        # with EOF or a reset on a closed one (no waiting to see whether a close comes).
        try:
            sock.sendall(b"GET /d41d8cd98f00b204e9800998ecf8427e+0 HTTP/1.1\r\nHost: x\r\n\r\n")
            second = sock.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            second = b""
        if second and not second.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"the connection stayed open but a second request got {second[:80]!r}")
        return head, not second


@pytest.fixture
def two_classes(tmp_path: Path):
    volumes = [parse_volume(f"{tmp_path / 'hot'}:hot"), parse_volume(f"{tmp_path / 'default'}")]
    with KeepServer(volumes, fsync=False) as server:
        yield server, tmp_path


# -- storage classes ---------------------------------------------------------------------------


def test_a_put_wanting_two_classes_writes_one_volume_of_each_in_one_put(two_classes) -> None:
    server, root = two_classes
    data = b"hot and default"
    md5 = hashlib.md5(data).hexdigest()
    status, headers, _ = _request(server, "PUT", f"/{md5}", data, {"X-Keep-Storage-Classes": "hot, default"})
    assert status == 200
    assert headers["x-keep-replicas-stored"] == "2"
    assert headers["x-keep-storage-classes-confirmed"] == "default=1, hot=1"
    assert list((root / "hot").rglob(md5)) and list((root / "default").rglob(md5))
    assert len([r for r in server.requests if r.method == "PUT"]) == 1


def test_a_second_class_is_added_to_a_block_already_stored_in_the_first(two_classes) -> None:
    server, root = two_classes
    data = b"first default, then hot too"
    md5 = hashlib.md5(data).hexdigest()
    assert _request(server, "PUT", f"/{md5}", data, {"X-Keep-Storage-Classes": "default"})[0] == 200
    status, headers, _ = _request(server, "PUT", f"/{md5}", data, {"X-Keep-Storage-Classes": "hot, default"})
    assert status == 200 and headers["x-keep-storage-classes-confirmed"] == "default=1, hot=1"
    assert list((root / "hot").rglob(md5))


@pytest.mark.compat
def test_the_arvados_sdk_puts_one_copy_in_two_classes_against_one_server(two_classes) -> None:
    """Regression (issue 16, item 1): only `default=1` was confirmed, so this put() failed."""
    arvados = pytest.importorskip("arvados")
    server, root = two_classes
    kc = arvados.keep.KeepClient(proxy=server.url, api_token=TOKEN, local_store="", num_retries=0)
    loc = kc.put(b"sdk, two classes", copies=1, classes=["hot", "default"])
    md5 = loc.split("+")[0]
    assert list((root / "hot").rglob(md5)) and list((root / "default").rglob(md5))
    assert len([r for r in server.requests if r.method == "PUT"]) == 1


def test_a_put_wanting_only_unknown_classes_is_507_and_stores_nothing(two_classes) -> None:
    server, root = two_classes
    data = b"nowhere to go"
    md5 = hashlib.md5(data).hexdigest()
    status, _, body = _request(server, "PUT", f"/{md5}", data, {"X-Keep-Storage-Classes": "archive"})
    assert status == 507 and b"archive" in body
    assert not [p for p in root.rglob(md5)]


# -- signatures --------------------------------------------------------------------------------


@pytest.fixture
def strict(tmp_path: Path):
    with KeepServer([tmp_path / "v"], signing_key=KEY, require_signatures=True, fsync=False) as server:
        assert _request(server, "PUT", f"/{FOO_MD5}", b"foo", AUTH)[0] == 200
        yield server


def test_an_expired_and_wrong_signature_is_401_because_expiry_is_checked_first(strict) -> None:
    expired = sign_locator(f"{FOO_MD5}+3", key="another key", token=TOKEN, expires_at=1_000_000)
    assert _request(strict, "GET", f"/{expired}", headers=AUTH)[0] == 401


def test_a_signed_head_without_a_size_is_accepted(strict) -> None:
    signed = sign_locator(f"{FOO_MD5}+3", key=KEY, token=TOKEN)
    sizeless = f"{FOO_MD5}+{signed.permission_hint}"
    status, headers, _ = _request(strict, "HEAD", f"/{sizeless}", headers=AUTH)
    assert status == 200 and headers["content-length"] == "3"
    wrong = sign_locator(f"{FOO_MD5}+3", key="another key", token=TOKEN)
    assert _request(strict, "HEAD", f"/{FOO_MD5}+{wrong.permission_hint}", headers=AUTH)[0] == 400
    assert _request(strict, "GET", f"/{sizeless}", headers=AUTH)[0] == 405  # a GET still needs the size


def test_x_keep_locator_is_given_only_for_remote_locators(strict) -> None:
    signed = sign_locator(f"{FOO_MD5}+3", key=KEY, token=TOKEN)
    ask = {**AUTH, "X-Keep-Signature": "local, 2026-12-01T08:00:00Z"}
    status, headers, _ = _request(strict, "HEAD", f"/{signed}", headers=ask)
    assert status == 200 and "x-keep-locator" not in headers
    status, headers, _ = _request(strict, "HEAD", f"/{signed}+Rzzzzz-{'0' * 40}@7fffffff", headers=ask)
    assert status == 200 and headers["x-keep-locator"].startswith(f"{FOO_MD5}+3+A")


# -- HTTP framing ------------------------------------------------------------------------------


def test_an_http_1_1_request_without_host_is_400(strict) -> None:
    head, closed = _raw(strict, f"GET /{FOO_MD5}+3 HTTP/1.1\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 400") and closed
    head, _ = _raw(strict, b"GET /d41d8cd98f00b204e9800998ecf8427e+0 HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")  # HTTP/1.0 needs no Host


def test_two_different_content_lengths_are_400(strict) -> None:
    request = f"PUT /{FOO_MD5} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nfoo!".encode()
    head, closed = _raw(strict, request)
    assert head.startswith(b"HTTP/1.1 400") and closed


def test_content_length_with_transfer_encoding_is_400_and_closes(strict) -> None:
    request = (f"PUT /{FOO_MD5} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nfoo\r\n0\r\n\r\n").encode()
    head, closed = _raw(strict, request)
    assert head.startswith(b"HTTP/1.1 400") and closed


def test_a_well_framed_request_keeps_the_connection_open(strict) -> None:
    head, closed = _raw(strict, b"GET /d41d8cd98f00b204e9800998ecf8427e+0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and not closed
