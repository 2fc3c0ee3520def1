"""keep serve: every status code, signing, the index, admission, shutdown, the command line."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keepstore import Locator, sign_locator
from keepstore.errors import ConfigError
from keepstore.server import KeepServer, Volume, parse_volume
from keepstore.server.faults import Gate
from keepstore.testing import wait_until

KEY = "testkey0123456789"
VECTOR_TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
FOO_MD5 = "acbd18db4cc2f85cedef654fccc4a4d8"
VECTOR_SIG = "12509e57ffc23274e389ae530c610c21a32bc2ec"


def request(server: KeepServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def put(server: KeepServer, data: bytes, token: str | None = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return request(server, "PUT", "/" + hashlib.md5(data).hexdigest(), data, headers)


@pytest.fixture
def server(tmp_path: Path):
    with KeepServer([tmp_path / "v0"], system_token="sys-token", fsync=False) as s:
        yield s


# -- PUT ---------------------------------------------------------------------------------------


def test_put_stores_the_block_in_the_volume_layout_and_answers_like_keepstore(server, tmp_path):
    status, headers, body = put(server, b"foo")
    assert status == 200
    assert body == f"{FOO_MD5}+3\n".encode()
    assert headers["x-keep-replicas-stored"] == "1"
    assert headers["x-keep-storage-classes-confirmed"] == "default=1"
    assert (tmp_path / "v0" / FOO_MD5[:3] / FOO_MD5).read_bytes() == b"foo"


def test_put_with_a_body_that_does_not_match_its_name_is_400_and_leaves_nothing(server, tmp_path):
    status, _, _ = request(server, "PUT", "/" + FOO_MD5, b"bar")
    assert status == 400
    assert [p for p in (tmp_path / "v0").rglob("*") if p.is_file()] == []


def test_put_of_a_bad_name_is_400(server):
    assert request(server, "PUT", "/not-a-hash", b"foo")[0] == 400
    assert request(server, "PUT", "/" + FOO_MD5.upper(), b"foo")[0] == 400


def test_put_with_a_size_that_disagrees_with_the_body_is_400(server):
    assert request(server, "PUT", f"/{FOO_MD5}+4", b"foo")[0] == 400
    assert request(server, "PUT", f"/{FOO_MD5}+3", b"foo")[0] == 200


def test_put_without_content_length_is_411(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("PUT", "/" + FOO_MD5)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"3\r\nfoo\r\n0\r\n\r\n")
    assert conn.getresponse().status == 411
    conn.close()


def test_put_over_64_mib_is_413_without_reading_the_body(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("PUT", "/" + FOO_MD5)
    conn.putheader("Content-Length", str(64 * 2**20 + 1))
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_put_of_a_stored_block_is_verified_and_not_rewritten(server, tmp_path):
    assert put(server, b"foo")[0] == 200
    path = tmp_path / "v0" / FOO_MD5[:3] / FOO_MD5
    os.utime(path, (1, 1))
    assert put(server, b"foo")[0] == 200
    assert path.stat().st_mtime > 1  # touched, as keepstore does
    assert request(server, "PUT", "/" + FOO_MD5, b"bar")[0] == 400
    assert path.read_bytes() == b"foo"


def test_storage_classes_are_confirmed_from_the_volume_written(tmp_path):
    volumes = [parse_volume(f"{tmp_path / 'hot'}:hot,fast"), parse_volume(f"{tmp_path / 'cold'}:archive")]
    with KeepServer(volumes, fsync=False) as s:
        status, headers, _ = put(s, b"hot data", **{"X-Keep-Storage-Classes": "hot"})
        assert status == 200
        assert headers["x-keep-storage-classes-confirmed"] == "fast=1, hot=1"
        status, headers, _ = put(s, b"cold data", **{"X-Keep-Storage-Classes": "archive"})
        assert headers["x-keep-storage-classes-confirmed"] == "archive=1"
    assert list((tmp_path / "cold").rglob(hashlib.md5(b"cold data").hexdigest()))


def test_507_when_every_volume_is_full(tmp_path):
    full = Volume(tmp_path / "small", capacity=10)
    with KeepServer([full], fsync=False) as s:
        assert put(s, b"12345")[0] == 200
        status, _, body = put(s, b"123456789")
        assert status == 507, body
        assert put(s, b"12345")[0] == 200  # already stored: no space needed


def test_a_really_full_disk_answers_507_leaves_nothing_torn_and_keeps_serving(tmp_path):
    from test_cache import mounted

    volume = tmp_path / "tiny"
    volume.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(volume)), \
            KeepServer([volume], fsync=False) as s:
        blocks = [os.urandom(1200 * 1024) for _ in range(4)]  # two fit; writes race for the rest
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda data: put(s, data)[0], blocks))
        assert set(statuses) <= {200, 507} and statuses.count(200) >= 1 and 507 in statuses, statuses
        for data, status in zip(blocks, statuses, strict=True):
            got = request(s, "GET", f"/{hashlib.md5(data).hexdigest()}+{len(data)}")
            if status == 200:
                assert got[0] == 200 and got[2] == data
            else:
                assert got[0] == 404  # a refused block is not there at all, torn or whole
        names = [p.name for p in volume.rglob("*") if p.is_file()]
        assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in names), names  # no temp file left behind
        assert len(names) == statuses.count(200)
        assert put(s, b"a small block still fits")[0] == 200


# -- GET / HEAD --------------------------------------------------------------------------------


def test_get_and_head_of_a_stored_block(server):
    put(server, b"foo")
    status, headers, body = request(server, "GET", f"/{FOO_MD5}+3")
    assert (status, body) == (200, b"foo")
    status, headers, body = request(server, "HEAD", f"/{FOO_MD5}+3")
    assert (status, headers["content-length"], body) == (200, "3", b"")


def test_get_of_an_absent_block_is_404(server):
    assert request(server, "GET", f"/{FOO_MD5}+3")[0] == 404
    assert request(server, "HEAD", f"/{FOO_MD5}+3")[0] == 404


def test_get_without_a_size_is_405_but_the_empty_block_is_always_served(server):
    put(server, b"foo")
    assert request(server, "GET", f"/{FOO_MD5}")[0] == 405
    assert request(server, "HEAD", f"/{FOO_MD5}")[0] == 200
    empty = "d41d8cd98f00b204e9800998ecf8427e"
    assert request(server, "GET", f"/{empty}")[:1] == (200,)
    assert request(server, "GET", f"/{empty}+0")[2] == b""


def test_get_of_a_bad_locator_is_400(server):
    assert request(server, "GET", "/zzz+3")[0] == 400
    assert request(server, "GET", f"/{FOO_MD5}+3+a")[0] == 400


def test_a_damaged_copy_on_disk_reaches_the_client_as_a_short_body(server, tmp_path):
    put(server, b"foo" * 1000)
    md5 = hashlib.md5(b"foo" * 1000).hexdigest()
    (tmp_path / "v0" / md5[:3] / md5).write_bytes(b"bar" * 1000)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/{md5}+3000")
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()


# -- signing -----------------------------------------------------------------------------------


@pytest.fixture
def signing_server(tmp_path: Path):
    with KeepServer([tmp_path / "v"], signing_key=KEY, require_signatures=True, fsync=False) as s:
        yield s


def test_put_responses_are_signed_for_the_callers_token(signing_server):
    status, _, body = put(signing_server, b"foo", token=VECTOR_TOKEN)
    assert status == 200
    loc = Locator.parse(body.decode().strip())
    assert loc.signature is not None
    assert loc == sign_locator(f"{FOO_MD5}+3", key=KEY, token=VECTOR_TOKEN, expires_at=int(loc.hints[0][-8:], 16))
    assert request(signing_server, "GET", f"/{loc}", headers={"Authorization": f"Bearer {VECTOR_TOKEN}"})[2] == b"foo"


def test_the_protocol_test_vector_signature_is_accepted(signing_server):
    put(signing_server, b"foo", token=VECTOR_TOKEN)
    auth = {"Authorization": f"OAuth2 {VECTOR_TOKEN}"}
    status, _, body = request(signing_server, "GET", f"/{FOO_MD5}+3+A{VECTOR_SIG}@7fffffff", headers=auth)
    assert (status, body) == (200, b"foo")
    wrong = VECTOR_SIG[:-1] + "d"
    assert request(signing_server, "GET", f"/{FOO_MD5}+3+A{wrong}@7fffffff", headers=auth)[0] == 400


def test_signature_enforcement_codes(signing_server):
    put(signing_server, b"foo", token=VECTOR_TOKEN)
    auth = {"Authorization": f"Bearer {VECTOR_TOKEN}"}
    signed = f"/{FOO_MD5}+3+A{VECTOR_SIG}@7fffffff"
    assert request(signing_server, "GET", signed)[0] == 401  # no token
    assert request(signing_server, "GET", f"/{FOO_MD5}+3", headers=auth)[0] == 400  # unsigned
    other = {"Authorization": "Bearer someone-else"}
    assert request(signing_server, "GET", signed, headers=other)[0] == 400  # not signed for this token
    expired = sign_locator(f"{FOO_MD5}+3", key=KEY, token=VECTOR_TOKEN, expires_at=1_000_000)
    assert request(signing_server, "GET", f"/{expired}", headers=auth)[0] == 401
    assert request(signing_server, "PUT", "/" + FOO_MD5, b"foo")[0] == 401  # PUT without a token


def test_head_of_a_bare_md5_is_refused_when_signatures_are_required(signing_server):
    """Regression: a HEAD of /<md5> (no size, so no signature) skipped enforcement and told
    anyone whether a block existed."""
    put(signing_server, b"foo", token=VECTOR_TOKEN)
    assert request(signing_server, "HEAD", f"/{FOO_MD5}")[0] == 401
    auth = {"Authorization": f"Bearer {VECTOR_TOKEN}"}
    assert request(signing_server, "HEAD", f"/{FOO_MD5}", headers=auth)[0] == 400
    assert request(signing_server, "HEAD", f"/{FOO_MD5}+3+A{VECTOR_SIG}@7fffffff", headers=auth)[0] == 200


def test_x_keep_signature_local_signs_a_remote_locator_afresh_only_where_signatures_are_enforced(tmp_path):
    """A `+R` locator that also carries a valid `+A` for the caller's token is re-signed by an
    enforcing server (the caller proved its permission)."""
    with KeepServer([tmp_path / "v"], signing_key=KEY, require_signatures=True, fsync=False) as s:
        signed = put(s, b"foo", token=VECTOR_TOKEN)[2].decode().strip()
        remote = f"/{signed}+Rzzzzz-{'0' * 40}@7fffffff"
        auth = {"Authorization": f"Bearer {VECTOR_TOKEN}"}
        status, headers, _ = request(s, "HEAD", remote, headers={**auth, "X-Keep-Signature": "local, 2026-12-01T08:00:00Z"})
        assert status == 200
        refreshed = Locator.parse(headers["x-keep-locator"])
        hint = refreshed.permission_hint
        assert refreshed.bare() == Locator.parse(f"{FOO_MD5}+3") and refreshed.signature is not None and hint
        assert refreshed == sign_locator(f"{FOO_MD5}+3", key=KEY, token=VECTOR_TOKEN,
                                         expires_at=int(hint[-8:], 16))
        assert "x-keep-locator" not in request(s, "HEAD", remote, headers=auth)[1]
        assert "x-keep-locator" not in request(s, "HEAD", remote, headers={**auth, "X-Keep-Signature": "remote"})[1]
        # A +R alone cannot be checked here: refused, and nothing signed.
        bare_remote = f"/{FOO_MD5}+3+Rzzzzz-{'0' * 40}@7fffffff"
        status, headers, _ = request(s, "HEAD", bare_remote, headers={**auth, "X-Keep-Signature": "local, x"})
        assert status == 400 and "x-keep-locator" not in headers


def test_a_server_that_does_not_enforce_signatures_is_no_signing_oracle(tmp_path):
    """Regression (issue 15, item 5): a non-enforcing server with the cluster's key signed any
    token's `+R` locator, and an enforcing server with the same key then served the block."""
    volume = tmp_path / "v"
    with KeepServer([volume], signing_key=KEY, fsync=False) as lax:
        put(lax, b"foo")
        remote = f"/{FOO_MD5}+3+Rzzzzz-{'0' * 40}@7fffffff"
        status, headers, _ = request(lax, "HEAD", remote, headers={
            "Authorization": "Bearer anyone-at-all", "X-Keep-Signature": "local, 2026-12-01T08:00:00Z"})
        assert status == 200
        assert headers["x-keep-locator"] == f"{FOO_MD5}+3"  # good here, and carries no signature
    with KeepServer([volume], signing_key=KEY, require_signatures=True, fsync=False) as strict:
        got = request(strict, "GET", "/" + headers["x-keep-locator"], headers={"Authorization": "Bearer anyone-at-all"})
        assert got[0] == 400 and got[2] != b"foo"


def test_require_signatures_without_a_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="signing key"):
        KeepServer([tmp_path], require_signatures=True)


# -- index -------------------------------------------------------------------------------------


def test_index_lists_blocks_with_mtime_and_a_final_empty_line(server):
    datas = [b"foo", b"bar", b"baz"]
    for d in datas:
        put(server, d)
    status, _, body = request(server, "GET", "/index", headers={"Authorization": "Bearer sys-token"})
    assert status == 200
    text = body.decode()
    assert text.endswith("\n\n")
    lines = text[:-2].split("\n")
    assert sorted(line.split()[0] for line in lines) == sorted(f"{hashlib.md5(d).hexdigest()}+3" for d in datas)
    for line in lines:
        assert re.fullmatch(r"[0-9a-f]{32}\+3 [0-9]{19}", line)
    status, _, body = request(server, "GET", "/index/acb", headers={"Authorization": "Bearer sys-token"})
    assert body.decode() == next(f"{line}\n\n" for line in lines if line.startswith("acb"))


def test_index_needs_the_system_token(server):
    assert request(server, "GET", "/index")[0] == 401
    assert request(server, "GET", "/index", headers={"Authorization": "Bearer nope"})[0] == 403
    assert request(server, "GET", "/index/zz", headers={"Authorization": "Bearer sys-token"})[0] == 400


# -- admission, concurrency, lifecycle ---------------------------------------------------------


def test_64_concurrent_clients_get_only_200_or_503_and_nothing_is_lost(tmp_path):
    with KeepServer([tmp_path / "v"], max_requests=4, fsync=False) as s:
        s.faults.delay(0.05, times=None, methods="PUT")  # hold requests so the limit is reached

        def one(i: int) -> tuple[int, bytes]:
            data = os.urandom(100_000) + i.to_bytes(4, "big")
            return put(s, data)[0], data

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
        s.faults.clear()
        statuses = {status for status, _ in results}
        assert statuses <= {200, 503}
        assert 503 in statuses and 200 in statuses
        for status, data in results:
            if status == 200:
                md5 = hashlib.md5(data).hexdigest()
                assert request(s, "GET", f"/{md5}+{len(data)}")[2] == data


def test_a_busy_server_answers_503_before_the_body_is_sent(tmp_path):
    with KeepServer([tmp_path / "v"], max_requests=1, fsync=False) as s:
        gate = Gate()
        s.faults.hold(gate, methods="GET")
        t = threading.Thread(target=request, args=(s, "GET", f"/{FOO_MD5}+3"))
        t.start()
        gate.wait_for(1)  # the GET holds the only slot before the PUT asks for one
        assert s.in_flight == 1
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        conn.putrequest("PUT", "/" + FOO_MD5)
        conn.putheader("Content-Length", "3")
        conn.putheader("Expect", "100-continue")
        conn.endheaders()  # no body sent: the answer must come anyway
        resp = conn.getresponse()
        assert resp.status == 503
        assert resp.getheader("Retry-After") == "1"
        conn.close()
        gate.open()
        t.join()


def test_unsupported_methods_with_expect_100_do_not_leak_admission_slots(tmp_path):
    """Regression: the slot was taken before "100 Continue", and for a method without a handler
    (PATCH) the stdlib answered 501 without ever releasing it: two such requests locked out a
    server with max_requests=2."""
    with KeepServer([tmp_path / "v"], max_requests=2, fsync=False) as s:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            conn.putrequest("PATCH", "/" + FOO_MD5)
            conn.putheader("Content-Length", "3")
            conn.putheader("Expect", "100-continue")
            conn.endheaders()
            conn.send(b"foo")
            assert conn.getresponse().status == 501
            conn.close()
        assert s.in_flight == 0
        assert put(s, b"foo")[0] == 200


def test_stop_closes_keepalive_connections_and_start_reuses_the_port(server):
    put(server, b"foo")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", f"/{FOO_MD5}+3")
    assert conn.getresponse().read() == b"foo"
    port = server.port
    server.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", f"/{FOO_MD5}+3")
        conn.getresponse().read()
    server.start()
    assert server.port == port
    assert request(server, "GET", f"/{FOO_MD5}+3")[2] == b"foo"


def test_requests_are_recorded_without_signatures(signing_server):
    put(signing_server, b"foo", token=VECTOR_TOKEN)
    request(signing_server, "GET", f"/{FOO_MD5}+3+A{VECTOR_SIG}@7fffffff",
            headers={"Authorization": f"Bearer {VECTOR_TOKEN}", "X-Request-Id": "req-abc"})
    last = signing_server.requests[-1]
    assert (last.method, last.status, last.request_id) == ("GET", 200, "req-abc")
    assert VECTOR_SIG not in last.path and "+A..." in last.path


# -- the command line --------------------------------------------------------------------------


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"listening on (http://127\.0\.0\.1:[0-9]+/)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"no URL from keep serve: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, match.group(1)


def test_keep_serve_prints_its_url_logs_requests_without_tokens_and_stops_on_sigterm(tmp_path):
    key = tmp_path / "key"
    key.write_text(KEY)
    proc, url = _serve("--volume", str(tmp_path / "v"), "--signing-key-file", str(key))
    try:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("PUT", "/" + FOO_MD5, b"foo", {"Authorization": f"Bearer {VECTOR_TOKEN}"})
        resp = conn.getresponse()
        signed = resp.read().decode().strip()
        assert resp.status == 200 and "+A" in signed
        conn.request("GET", "/" + signed, headers={"Authorization": f"Bearer {VECTOR_TOKEN}"})
        assert conn.getresponse().read() == b"foo"
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert re.search(rf'"PUT /{FOO_MD5}" 200', err)
    assert re.search(rf'"GET /{FOO_MD5}\+3\+A\.\.\." 200', err)
    assert "secret123" not in err and signed.split("+A")[1] not in err


def test_keep_serve_reports_bad_arguments_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "nonsense",
                          "--volume", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "HOST:PORT" in out.stderr
    out = subprocess.run([sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0",
                          "--volume", str(tmp_path), "--require-signatures"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "signing key" in out.stderr


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):  # reset: the listener closed under us
        return True
    return False


def test_sigterm_during_a_slow_upload_leaves_nothing_partial(tmp_path):
    proc, url = _serve("--volume", str(tmp_path / "v"))
    port = int(url.rsplit(":", 1)[1].strip("/"))
    data = os.urandom(4 << 20)
    md5 = hashlib.md5(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("PUT", "/" + md5)
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[: 1 << 20])  # a quarter of the body, then the server is told to stop
    volume = tmp_path / "v"
    wait_until(lambda: any(p.name.startswith(".tmp-") for p in volume.rglob("*")), what="the server's writer beginning")
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _refused(port), what="the server to stop listening")  # it has the SIGTERM
    conn.close()  # the client gives up mid-body
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not list((tmp_path / "v").rglob(md5))
    assert not [p for p in (tmp_path / "v").rglob("*") if p.is_file()]


# -- regressions found in review ---------------------------------------------------------------


def test_a_slow_but_steady_reader_gets_the_whole_block(tmp_path):
    """Regression: the body went out in 4 MiB socket writes, each bounded by idle_timeout, so a
    reader taking less than 4 MiB per idle_timeout was cut off though it never paused."""
    import socket

    data = os.urandom(6 << 20)
    with KeepServer([tmp_path / "v"], idle_timeout=1.0, fsync=False) as s:
        assert put(s, data)[0] == 200
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.sendall(f"GET /{hashlib.md5(data).hexdigest()}+{len(data)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = bytearray()
            while len(got) < len(data) + 100:  # about 2.5 MiB/s: 4 MiB takes longer than 1 s
                chunk = sock.recv(32 << 10)
                if not chunk:
                    break
                got += chunk
                time.sleep(0.012)  # a slow reader's pace (the behaviour under test)
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == data


def test_a_put_over_a_damaged_copy_writes_a_good_one(tmp_path):
    """Regression: a re-PUT was acknowledged over a copy damaged on disk, which every GET then
    truncated: the client counted a replica that could not be read."""
    with KeepServer([tmp_path / "v"], fsync=False) as s:
        assert put(s, b"precious")[0] == 200
        found = s.find(hashlib.md5(b"precious").hexdigest(), 8)
        assert found is not None
        path = found[1]
        path.write_bytes(b"prec1ous")  # same size, one byte changed
        assert put(s, b"precious")[0] == 200
        assert request(s, "GET", f"/{hashlib.md5(b'precious').hexdigest()}+8")[2] == b"precious"


def test_faults_by_block_apply_to_signed_locators_too(signing_server):
    put(signing_server, b"foo", token=VECTOR_TOKEN)
    signing_server.faults.fail(503, methods="GET", block=FOO_MD5)
    auth = {"Authorization": f"Bearer {VECTOR_TOKEN}"}
    assert request(signing_server, "GET", f"/{FOO_MD5}+3+A{VECTOR_SIG}@7fffffff", headers=auth)[0] == 503
    assert request(signing_server, "GET", f"/{FOO_MD5}+3+A{VECTOR_SIG}@7fffffff", headers=auth)[0] == 200


def test_full_is_spent_only_on_a_new_block(server):
    put(server, b"foo")
    server.faults.full(times=1)
    assert put(server, b"foo")[0] == 200  # already stored: no space needed, rule not spent
    assert put(server, b"new block")[0] == 507
    assert put(server, b"new block")[0] == 200


def test_concurrent_puts_of_one_block_count_its_size_once(tmp_path):
    volume = Volume(tmp_path / "v", capacity=3000)
    data = os.urandom(1000)
    with KeepServer([volume], fsync=False) as s:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            assert list(pool.map(lambda _: put(s, data)[0], range(3))) == [200] * 3
        assert volume.used == 1000
        assert put(s, os.urandom(1000))[0] == 200


def test_a_get_with_a_body_closes_the_connection_so_nothing_is_smuggled(server):
    import socket

    put(server, b"foo")
    inner = f"PUT /{hashlib.md5(b'bar').hexdigest()} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nbar".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET /{FOO_MD5}+3 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(inner)}\r\n\r\n".encode() + inner)
        answers = b""
        while chunk := sock.recv(4096):
            answers += chunk
    assert answers.count(b"HTTP/1.1 ") == 1 and answers.startswith(b"HTTP/1.1 200")
    assert server.find(hashlib.md5(b"bar").hexdigest(), 3) is None


def test_an_oversized_put_is_refused_before_100_continue(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"PUT /{FOO_MD5} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\nExpect: 100-continue\r\n\r\n".encode())
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:40]
    assert put(server, b"foo")[0] == 200
