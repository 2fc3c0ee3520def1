"""Exchange: a small block body kept as it came in one piece, or assembled from several."""

from __future__ import annotations

import hashlib
import os

import pytest

from keepstore.transport import Request
from keepstore.transport.exchange import Exchange

HEAD = [b"HTTP/1.1 200 OK\r\n", b"Content-Length: 4096\r\n", b"X-Request-Id: req-1\r\n", b"\r\n"]


def receive(data: bytes, pieces: list[bytes], expected: int | None = None) -> Exchange:
    exchange = Exchange(Request("GET", "http://127.0.0.1:1/x", expected_size=expected or len(data)))
    for line in HEAD:
        assert exchange.on_header(line) is None
    for piece in pieces:
        if exchange.on_body(piece) == 0:
            break
    return exchange


def test_a_block_in_one_piece_is_answered_as_that_piece_without_a_copy() -> None:
    data = os.urandom(4096)
    response = receive(data, [data]).response()
    assert response.body is data and response.body_md5 == hashlib.md5(data).hexdigest()
    assert response.status == 200 and response.headers["x-request-id"] == "req-1"


@pytest.mark.parametrize("cut", [1, 1000, 4095])
def test_a_block_in_pieces_is_assembled_and_hashed_whole(cut: int) -> None:
    data = os.urandom(4096)
    response = receive(data, [data[:cut], data[cut:]]).response()
    assert response.body == data and response.body_md5 == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("pieces", [[b"x" * 4096, b"y"], [b"x" * 4000, b"y" * 97]])
def test_a_piece_past_the_expected_size_aborts_the_transfer(pieces: list[bytes]) -> None:
    exchange = Exchange(Request("GET", "http://127.0.0.1:1/x", expected_size=4096))
    for line in HEAD:
        exchange.on_header(line)
    results = [exchange.on_body(p) for p in pieces]
    assert results[-1] == 0 and exchange.too_long and exchange.received <= 4096


def test_a_short_body_is_answered_short_so_the_reader_rejects_it() -> None:
    data = os.urandom(4096)
    response = receive(data, [data[:100]]).response()
    assert response.body == data[:100]
