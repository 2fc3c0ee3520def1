"""What HTTP statuses mean to KeepClient (as the Arvados SDK has it), and refresh_signature."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from keepstore import KeepClient, Locator, ReadError, Service, sign_locator
from keepstore.client.wire import Status, classify
from keepstore.server import KeepServer

DATA = b"status codes"
LOC = Locator.for_data(DATA)
KEY = b"k" * 32
TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.mark.parametrize(("status", "meaning"), [
    (200, Status.OK), (203, Status.OK), (299, Status.OK),
    (404, Status.NOT_FOUND), (403, Status.NOT_FOUND), (410, Status.NOT_FOUND),
    (429, Status.TRANSIENT), (503, Status.TRANSIENT), (600, Status.TRANSIENT), (99, Status.TRANSIENT),
    (0, Status.TRANSIENT), (400, Status.PERMANENT), (302, Status.PERMANENT), (507, Status.FULL),
])
def test_statuses_mean_what_they_mean_to_the_arvados_sdk(status: int, meaning: Status) -> None:
    assert classify(status) is meaning


@pytest.mark.parametrize("status", [201, 203, 206])
def test_any_2xx_with_the_block_is_a_successful_get(httpserver: HTTPServer, status: int) -> None:
    httpserver.expect_request(f"/{LOC}").respond_with_data(DATA, status=status)
    with KeepClient([httpserver.url_for("/")], retries=0) as kc:
        assert kc.get(LOC) == DATA


def test_a_2xx_get_with_wrong_bytes_is_not_a_success(httpserver: HTTPServer) -> None:
    httpserver.expect_request(f"/{LOC}").respond_with_data(b"x" * LOC.size, status=203)
    with KeepClient([httpserver.url_for("/")], retries=0) as kc, pytest.raises(ReadError, match="203 with a checksum"):
        kc.get(LOC)


def test_a_204_head_is_found(httpserver: HTTPServer) -> None:
    httpserver.expect_request(f"/{LOC}", method="HEAD").respond_with_data(b"", status=204)
    with KeepClient([httpserver.url_for("/")], retries=0) as kc:
        assert kc.head(LOC) is True


@pytest.mark.parametrize("status", [600, 429])
def test_statuses_outside_100_599_and_429_are_retried(httpserver: HTTPServer, status: int) -> None:
    httpserver.expect_ordered_request(f"/{LOC}").respond_with_data(b"odd", status=status)
    httpserver.expect_ordered_request(f"/{LOC}").respond_with_data(DATA, status=200)
    sleeps = Sleeps()
    with KeepClient([httpserver.url_for("/")], retries=1, sleep=sleeps) as kc:
        assert kc.get(LOC) == DATA
        assert kc.stats().retries == 1


def test_a_201_put_with_the_locator_is_stored(httpserver: HTTPServer) -> None:
    httpserver.expect_request(f"/{LOC.md5}", method="PUT").respond_with_data(f"{LOC}\n", status=201)
    with KeepClient([Service("zzzzz-bi6l4-000000000000000", httpserver.url_for("/"))], retries=0) as kc:
        assert kc.put_block(DATA, copies=1).replicas == 1


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[KeepServer]:
    """Answers a refreshing HEAD without X-Keep-Locator, as keepstore does for a non-+R locator."""
    with KeepServer([tmp_path / "volume"], fsync=False) as server:
        server.blocks.store(LOC.md5, LOC.size, [DATA], ())
        yield server


def _signed(expires: datetime.datetime) -> Locator:
    return Locator.parse(str(sign_locator(LOC, key=KEY, token=TOKEN, expires_at=expires)))


def test_refresh_of_a_valid_a_signature_without_x_keep_locator_returns_it(plain_server: KeepServer) -> None:
    signed = _signed(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=14))
    with KeepClient([plain_server.url], token=TOKEN, retries=0) as kc:
        assert kc.refresh_signature(signed) == signed
    assert [(r.method, r.status) for r in plain_server.requests] == [("HEAD", 200)]


def test_refresh_of_an_expired_signature_without_x_keep_locator_fails(plain_server: KeepServer) -> None:
    expired = _signed(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    with KeepClient([plain_server.url], token=TOKEN, retries=0) as kc, \
            pytest.raises(ReadError, match="without a valid X-Keep-Locator"):
        kc.refresh_signature(expired)


def test_the_arvados_sdk_does_not_fail_there_either(plain_server: KeepServer) -> None:
    import arvados.keep

    signed = _signed(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=14))
    arv = arvados.keep.KeepClient(proxy=plain_server.url, api_token=TOKEN, local_store="", num_retries=0)
    assert arv.refresh_signature(str(signed)) is True  # keepstore returns the locator itself
