"""Wire compatibility with the real Arvados Python SDK through the same loopback Keep servers."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import arvados
import arvados.keep
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse

from keepstore import KeepClient, Locator, probe_order
from keepstore.client import HedgePolicy
from keepstore.server import KeepServer

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[KeepServer]]:
    started = [KeepServer([tmp_path / f"volume{i}"], fsync=False).start() for i in range(4)]
    yield started
    for s in started:
        s.stop(grace=1)


def _arvados(urls: str) -> arvados.keep.KeepClient:
    return arvados.keep.KeepClient(proxy=urls, api_token=TOKEN, local_store="", num_retries=0)


def test_arvados_reads_what_we_wrote(servers: list[KeepServer]) -> None:
    urls = " ".join(s.url for s in servers)
    blocks = [os.urandom(n) for n in (0, 1, 1000, 3 << 20)]
    with KeepClient(urls, token=TOKEN) as kc:
        locators = [kc.put(b, copies=2) for b in blocks]
    arv = _arvados(urls)
    for loc, data in zip(locators, blocks, strict=True):
        assert arv.get(str(loc)) == data
        assert arv.head(str(loc)) is True


def test_we_read_what_arvados_wrote_and_find_it_where_arvados_put_it(servers: list[KeepServer]) -> None:
    urls = " ".join(s.url for s in servers)
    arv = _arvados(urls)
    # Hedging off: the probes are counted, and a hedge (a busy machine's slow first byte) adds one.
    with KeepClient(urls, token=TOKEN, retries=0, hedge=HedgePolicy(enabled=False)) as kc:
        for i in range(10):
            data = b"written by arvados %d" % i
            text = arv.put(data, copies=2)
            loc = Locator.parse(text)
            assert kc.get(text) == data and kc.head(loc)
            # Same placement: the two replicas are on our two top-ranked services.
            top = [svc.root for svc in probe_order(loc, kc.services)[:2]]
            holders = [s.url for s in servers if s.find(loc.md5, None) is not None]
            assert sorted(holders) == sorted(top)
            probed = [s.url for s in servers for r in s.requests if r.method == "GET" and loc.md5 in r.path]
            assert probed == top[:1], "the first probe hits"


def test_both_clients_send_the_same_put_headers(httpserver: HTTPServer) -> None:
    def put(request: WRequest) -> WResponse:  # a proxy storing both copies
        data = request.get_data()
        return WResponse(f"{hashlib.md5(data).hexdigest()}+{len(data)}\n", headers={"X-Keep-Replicas-Stored": "2"})

    httpserver.expect_request(re.compile("/[0-9a-f]{32}"), method="PUT").respond_with_handler(put)
    url = httpserver.url_for("/")
    _arvados(url).put(b"arv", copies=2)
    with KeepClient(url, token=TOKEN) as kc:
        kc.put(b"ours", copies=2)
    puts = [request.headers for request, _ in httpserver.log if request.method == "PUT"]
    assert len(puts) == 2
    arv_put, our_put = (next(h for h in puts if h["Content-Length"] == n) for n in ("3", "4"))
    for name in ("Authorization", "X-Keep-Desired-Replicas"):
        assert arv_put[name] == our_put[name]
    assert arv_put["X-Request-Id"][:4] == our_put["X-Request-Id"][:4] == "req-"
    assert len(our_put["X-Request-Id"]) == len(arv_put["X-Request-Id"])


def test_locators_agree_with_the_arvados_locator_parser(servers: list[KeepServer]) -> None:
    with KeepClient([s.url for s in servers]) as kc:
        loc = kc.put(b"same text")
    arv_loc = arvados.KeepLocator(str(loc))
    assert arv_loc.md5sum == loc.md5 == hashlib.md5(b"same text").hexdigest() and arv_loc.size == loc.size
