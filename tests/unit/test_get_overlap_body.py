"""HashedBody (a large GET body hashed on a second thread as it arrives) and how an Exchange uses it."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from keepstore.transport import Request
from keepstore.transport.exchange import Exchange
from keepstore.transport.overlap import OVERLAP_MIN, HashedBody, OverlapCounts, overlap_supported

MiB = 1 << 20
PIECE = 16 << 10  # what libcurl hands over at a time

pytestmark = pytest.mark.skipif(not overlap_supported(), reason="HashedBody needs CPython's ctypes")


def md5_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "keepstore-md5"]


def feed(body: HashedBody, data: bytes, piece: int = PIECE) -> None:
    for start in range(0, len(data), piece):
        assert body.write(data[start:start + piece])


@pytest.mark.parametrize("threaded", [True, False])
def test_the_result_is_the_filled_bytes_and_their_md5(threaded: bool) -> None:
    data = os.urandom(6 * MiB + 123)
    counts = OverlapCounts()
    body = HashedBody(len(data), counts, threaded=threaded)
    feed(body, data)
    got, digest = body.result()
    assert type(got) is bytes and got == data
    assert digest == hashlib.md5(data).hexdigest()
    assert (counts.bodies, counts.inline) == (1, 0 if threaded else 1)
    assert (counts.threads >= 1) is threaded
    assert md5_threads() == []


def test_a_piece_past_the_expected_size_is_refused_and_not_written() -> None:
    body = HashedBody(MiB + 10, threaded=True)
    feed(body, b"a" * MiB)
    assert body.write(b"b" * 10)
    assert not body.write(b"c")
    got, digest = body.result()
    assert got == b"a" * MiB + b"b" * 10 and digest == hashlib.md5(got).hexdigest()


def test_a_short_body_is_the_start_that_came_and_its_md5() -> None:
    data = os.urandom(3 * MiB)
    body = HashedBody(4 * MiB, threaded=True)
    feed(body, data)
    got, digest = body.result()
    assert got == data and digest == hashlib.md5(data).hexdigest()


def test_close_ends_the_hashing_thread_and_the_body_is_gone() -> None:
    body = HashedBody(8 * MiB, threaded=True)
    feed(body, os.urandom(5 * MiB))
    body.close()
    body.close()  # idempotent
    assert md5_threads() == []
    assert not body.write(b"x")
    with pytest.raises(RuntimeError, match="closed"):
        body.result()


def test_a_hasher_that_caught_up_is_started_again_for_what_comes_next() -> None:
    counts = OverlapCounts()
    data = os.urandom(8 * MiB)
    body = HashedBody(len(data), counts, threaded=True)
    for start in range(0, len(data), 2 * MiB):  # each piece hashed before the next comes
        assert body.write(data[start:start + 2 * MiB])
        for thread in list(md5_threads()):
            thread.join()
    assert counts.threads == 4
    assert body.result() == (data, hashlib.md5(data).hexdigest())


def exchange_for(size: int) -> tuple[Exchange, OverlapCounts]:
    counts = OverlapCounts()
    exchange = Exchange(Request("GET", "http://127.0.0.1:1/x", expected_size=size), counts)
    exchange.on_header(b"HTTP/1.1 200 OK\r\n")
    exchange.on_header(f"Content-Length: {size}\r\n".encode())
    exchange.on_header(b"\r\n")
    return exchange, counts


def test_an_exchange_receives_a_large_block_body_into_a_hashed_body() -> None:
    data = os.urandom(OVERLAP_MIN)
    exchange, counts = exchange_for(len(data))
    for start in range(0, len(data), PIECE):
        assert exchange.on_body(data[start:start + PIECE]) is None
    response = exchange.response()
    assert response.body == data and response.body_md5 == hashlib.md5(data).hexdigest()
    assert counts.bodies == 1
    assert md5_threads() == []


def test_a_body_below_the_threshold_is_hashed_as_it_comes() -> None:
    data = os.urandom(OVERLAP_MIN - 1)
    exchange, counts = exchange_for(len(data))
    exchange.on_body(data)
    response = exchange.response()
    assert response.body == data and response.body_md5 == hashlib.md5(data).hexdigest()
    assert counts.bodies == 0


def test_a_large_body_longer_than_expected_stops_the_transfer() -> None:
    exchange, _ = exchange_for(OVERLAP_MIN)
    assert exchange.on_body(b"x" * OVERLAP_MIN) is None
    assert exchange.on_body(b"y") == 0 and exchange.too_long
    exchange.close()
    assert md5_threads() == []


def test_an_error_status_body_is_kept_bounded_not_hashed() -> None:
    counts = OverlapCounts()
    exchange = Exchange(Request("GET", "http://127.0.0.1:1/x", expected_size=OVERLAP_MIN), counts)
    exchange.on_header(b"HTTP/1.1 503 Busy\r\n")
    exchange.on_header(b"\r\n")
    exchange.on_body(b"busy" * 2000)
    response = exchange.response()
    assert response.status == 503 and response.truncated and response.body_md5 is None
    assert counts.bodies == 0
