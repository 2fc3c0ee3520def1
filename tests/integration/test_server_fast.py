"""keep serve's fast paths: verified copies sent unread (sendfile), the lean request reader, and
every protection still in force on them."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
from pathlib import Path

import pytest
from slow_clients import SlowReader

from keepstore.server import KeepServer
from keepstore.server.wire import SMALL_BODY
from keepstore.testing import wait_until


def _put(server: KeepServer, data: bytes) -> str:
    md5 = hashlib.md5(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("PUT", f"/{md5}", body=data)
    assert conn.getresponse().status == 200
    conn.close()
    return f"/{md5}+{len(data)}"


def _get(server: KeepServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _short_get(server: KeepServer, path: str) -> int:
    """GET whose body the server cuts short: how many bytes arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    conn.close()
    return len(info.value.partial)


@pytest.fixture
def server(tmp_path: Path):
    with KeepServer([tmp_path / "v"], fsync=False) as s:
        yield s


@pytest.mark.parametrize("size", [4096, 3 << 20])  # one write with the head; sendfile
def test_a_verified_copy_is_sent_unread_and_whole(server: KeepServer, size: int) -> None:
    data = os.urandom(size)
    path = _put(server, data)
    assert _get(server, path) == (200, data)  # hashed while sent: now verified
    hits = server.blocks.verified.hits
    for _ in range(3):
        assert _get(server, path) == (200, data)
    assert server.blocks.verified.hits == hits + 3


@pytest.mark.parametrize("size", [4096, 3 << 20])
def test_the_first_get_after_a_put_is_sent_unread_and_a_copy_changed_since_is_hashed_again(
        server: KeepServer, size: int) -> None:
    data = os.urandom(size)
    path = _put(server, data)  # the body hashed to its name as it was written: verified
    hits = server.blocks.verified.hits
    assert _get(server, path) == (200, data)
    assert server.blocks.verified.hits == hits + 1
    other = os.urandom(size)
    second = _put(server, other)
    found = server.find(second[1:33], size)
    assert found is not None
    _rewrite_keeping_mtime(found.path, bytes(size))  # damaged after the PUT, before any GET
    misses = server.blocks.verified.misses
    assert _short_get(server, second) < size  # hashed, found damaged, cut short: never sent as good
    assert server.blocks.verified.misses == misses + 1


def test_many_requests_on_one_connection_all_get_their_own_answer(server: KeepServer) -> None:
    blocks = [os.urandom(n) for n in (1, 100, 70_000, 1 << 20)]
    paths = [_put(server, b) for b in blocks]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(3):
        for path, data in zip(paths, blocks, strict=True):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, data)
            conn.request("HEAD", path)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Length") == str(len(data)) and resp.read() == b""
    conn.close()


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino


@pytest.mark.parametrize("size", [4096, 3 << 20])
def test_a_copy_changed_after_verification_is_hashed_again_and_never_sent_as_good(server: KeepServer,
                                                                                  size: int) -> None:
    data = os.urandom(size)
    path = _put(server, data)
    assert _get(server, path) == (200, data)
    found = server.find(path[1:33], size)
    assert found is not None
    _rewrite_keeping_mtime(found.path, bytes(size))  # same inode, size and mtime: only the ctime tells
    misses = server.blocks.verified.misses
    for _ in range(2):  # hashed again each time: a damaged copy is never remembered as verified
        assert _short_get(server, path) < size
    assert server.blocks.verified.misses == misses + 2 and len(server.blocks.verified) == 0
    assert len(server.scrub_once().quarantined) == 1  # the scrubber moves it aside
    assert _get(server, path)[0] == 404


def test_a_hot_small_block_is_served_from_kept_bytes_only_while_its_file_is_unchanged(server: KeepServer) -> None:
    data = os.urandom(4096)
    path = _put(server, data)
    verified = server.blocks.verified
    for _ in range(4):  # the PUT's own bytes were kept: the first GET is answered from them too
        assert _get(server, path) == (200, data)
    assert verified.kept_hits == 4
    found = server.find(path[1:33], len(data))
    assert found is not None
    _rewrite_keeping_mtime(found.path, bytes(len(data)))  # same inode, size, mtime: the ctime tells
    assert _short_get(server, path) < len(data)  # hashed again, found damaged: never the kept bytes
    assert verified.kept_hits == 4
    found.path.write_bytes(data)  # repaired: verified again when next read, then kept again
    for _ in range(3):
        assert _get(server, path) == (200, data)
    assert verified.kept_hits == 5
    found.path.unlink()
    assert _get(server, path)[0] == 404  # gone: kept bytes are never an answer without the file


def test_a_put_keeps_a_small_blocks_bytes_for_the_first_get_and_not_a_large_ones(server: KeepServer) -> None:
    verified = server.blocks.verified
    small, large = os.urandom(SMALL_BODY), os.urandom(SMALL_BODY + 1)
    small_path, large_path = _put(server, small), _put(server, large)
    hits = verified.kept_hits
    assert _get(server, small_path) == (200, small)
    assert verified.kept_hits == hits + 1  # answered from the PUT's bytes, not read from the file
    for _ in range(2):
        assert _get(server, large_path) == (200, large)  # verified, sent unread, never kept
    assert verified.kept_hits == hits + 1


def test_a_copy_replaced_by_a_new_file_is_hashed_again(server: KeepServer) -> None:
    data = os.urandom(1 << 20)
    path = _put(server, data)
    assert _get(server, path) == (200, data)
    found = server.find(path[1:33], len(data))
    assert found is not None
    other = found.path.with_name("replacement")
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    os.replace(other, found.path)
    assert _short_get(server, path) < len(data)
    assert len(server.blocks.verified) == 0


def test_a_trashed_and_untrashed_copy_is_hashed_again(tmp_path: Path) -> None:
    with KeepServer([tmp_path / "v"], fsync=False, system_token="sys", trash_min_age=0) as s:
        data = os.urandom(1 << 20)
        path = _put(s, data)
        assert _get(s, path) == (200, data)
        assert len(s.blocks.verified) == 1
        for method, target in (("DELETE", path), ("PUT", f"/untrash{path}")):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            conn.request(method, target, headers={"Authorization": "Bearer sys"})
            assert conn.getresponse().status == 200
            conn.close()
        assert len(s.blocks.verified) == 0  # forgotten when trashed
        misses = s.blocks.verified.misses
        assert _get(s, path) == (200, data)
        assert s.blocks.verified.misses == misses + 1


def test_faults_still_apply_to_a_verified_copy(server: KeepServer) -> None:
    data = os.urandom(1 << 20)
    path = _put(server, data)
    assert _get(server, path) == (200, data)
    server.faults.corrupt()
    status, body = _get(server, path)
    assert status == 200 and len(body) == len(data) and body != data
    server.faults.truncate()
    assert _short_get(server, path) == len(data) // 2
    server.faults.fail(503, methods="GET")
    assert _get(server, path)[0] == 503
    assert _get(server, path) == (200, data)


def test_requests_the_lean_reader_does_not_take_are_answered_as_before(server: KeepServer) -> None:
    data = b"plain"
    path = _put(server, data)
    for head, status in ((f"GET {path} HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0: the standard library's parser
                         (f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", 200),  # obs-fold
                         (f"GET {path} HTTP/1.1\r\n\r\n", 400),  # no Host
                         (f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
                         (f"BREW {path} HTTP/1.1\r\nHost: x\r\n\r\n", 501)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head.encode())
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        assert answer.split(b" ", 2)[1] == str(status).encode(), (head, answer[:80])


@pytest.mark.wall_clock
def test_a_head_built_to_make_the_reader_backtrack_does_not_stall_other_connections(server: KeepServer) -> None:
    # 60,000 spaces and a NUL in one field: the lean reader's field pattern once tried every
    # split of the spaces, 13 s of CPU holding the interpreter lock, and every connection of
    # the process waited. Now it refuses the head at once and the standard library answers it.
    path = _put(server, b"plain")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as hostile:
        hostile.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nA:".encode() + b" " * 60000 + b"\x00\r\n\r\n")
        started = time.monotonic()  # (the server runs in this process: a socket timeout would
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # wait for the lock too)
        conn.request("GET", path)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"plain")
        seconds = time.monotonic() - started
        conn.close()
        answer = hostile.recv(100)
    assert answer.startswith(b"HTTP/1.1 ") and seconds < 5


def test_a_slow_reader_of_a_verified_copy_holds_one_slot_until_the_minimum_rate_cuts_it_off(tmp_path: Path) -> None:
    data = os.urandom(16 << 20)
    with KeepServer([tmp_path / "v"], max_requests=1, idle_timeout=8, min_rate=8 << 20, fsync=False) as s:
        path = _put(s, data)
        wait_until(lambda: s.in_flight == 0, 20, what="the PUT's slot given back")  # freed after its answer
        assert _get(s, path) == (200, data)  # verified: the slow reader gets sendfile
        wait_until(lambda: s.in_flight == 0, 20, what="the GET's slot given back")
        hits = s.blocks.verified.hits
        reader = SlowReader(s.port, path)
        reader.start()
        wait_until(lambda: s.in_flight == 1, 20, what="the slow reader admitted")
        assert _get(s, path)[0] == 503  # admission holds on the fast path
        assert reader.closed_by_server.wait(60)
        reader.join(5)
        assert s.blocks.verified.hits == hits + 1
        assert 0 < reader.received < len(data)
        wait_until(lambda: s.in_flight == 0, 20, what="the slot given back")
        assert _get(s, path) == (200, data)
