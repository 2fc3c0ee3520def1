"""A small put's copies go out at once on one curl multi handle in the caller's thread (no
replica pool thread), and a copy that fails is replaced while the others still run (also for
a large put, whose copies go to the replica pool)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse

from keepstore import KeepClient
from keepstore.locator import Locator
from keepstore.server import KeepServer
from keepstore.services import Service, probe_order


def disk(urls: list[str]) -> list[Service]:
    return [Service(f"zzzzz-bi6l4-{i:015d}", url, "disk") for i, url in enumerate(urls)]


def _put_pool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("keepstore-put")}


def test_copies_go_out_together_without_a_pool_thread(servers: list[KeepServer]) -> None:
    elsewhere = _put_pool_threads()  # another test's client, not yet collected, may still have some
    with KeepClient(services=disk([s.url for s in servers]), token="t", copies=2) as kc:
        blocks = [os.urandom(4096 + i) for i in range(20)]
        for data in blocks:
            result = kc.put_block(data)
            assert result.replicas == 2
        assert not [t.name for t in _put_pool_threads() - elsewhere]
        assert kc.stats().requests == 40  # one PUT per copy, nothing retried
    for data in blocks:
        md5 = hashlib.md5(data).hexdigest()
        holders = [s for s in servers if s.find(md5, len(data)) is not None]
        assert len(holders) == 2
        for server in holders:
            found = server.find(md5, len(data))
            assert found is not None and found.path.read_bytes() == data


@pytest.mark.parametrize("size", [4096, 2 << 20], ids=["fan-out", "replica pool"])
def test_a_failed_copy_is_replaced_while_the_other_still_runs(size: int) -> None:
    data = os.urandom(size)
    loc = Locator.for_data(data)
    answer = f"{loc}\n"
    http = [HTTPServer(host="127.0.0.1", port=0) for _ in range(3)]
    for server in http:
        server.start()
    try:
        services = disk([server.url_for("/") for server in http])
        order = probe_order(loc, services)
        by_root = {server.url_for("/"): server for server in http}
        failing, slow, spare = (by_root[s.root] for s in order)
        spare_asked = threading.Event()

        def slow_answer(request: WRequest) -> WResponse:
            # Answers only once the spare has been asked: were the replacement started after
            # this PUT ended, this would wait out its 10 s and fail the put.
            ok = spare_asked.wait(10)
            return WResponse(answer if ok else "never replaced", status=200 if ok else 500,
                             headers={"X-Keep-Replicas-Stored": "1"})

        def spare_answer(request: WRequest) -> WResponse:
            spare_asked.set()
            return WResponse(answer, status=200, headers={"X-Keep-Replicas-Stored": "1"})

        failing.expect_request(f"/{loc.md5}", method="PUT").respond_with_data("busy", status=503)
        slow.expect_request(f"/{loc.md5}", method="PUT").respond_with_handler(slow_answer)
        spare.expect_request(f"/{loc.md5}", method="PUT").respond_with_handler(spare_answer)
        with KeepClient(services=services, token="t", copies=2) as kc:
            result = kc.put_block(data)
        assert result.replicas == 2
        assert sorted(result.services) == sorted([slow.url_for("/"), spare.url_for("/")])
        assert [len(server.log) for server in (failing, slow, spare)] == [1, 1, 1]
    finally:
        for server in http:
            server.clear()
            server.stop()
