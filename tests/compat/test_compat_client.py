"""Wire compatibility with the real Arvados Python SDK through the same loopback Keep servers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import arvados
import arvados.keep
import pytest
from keepstub import KeepStub

from keepstore import KeepClient, Locator, probe_order

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"


@pytest.fixture
def stubs() -> Iterator[list[KeepStub]]:
    servers = [KeepStub() for _ in range(4)]
    yield servers
    for s in servers:
        s.stop()


def _arvados(urls: str) -> arvados.keep.KeepClient:
    return arvados.keep.KeepClient(proxy=urls, api_token=TOKEN, local_store="", num_retries=0)


def test_arvados_reads_what_we_wrote(stubs: list[KeepStub]) -> None:
    urls = " ".join(s.url for s in stubs)
    blocks = [os.urandom(n) for n in (0, 1, 1000, 3 << 20)]
    with KeepClient(urls, token=TOKEN) as kc:
        locators = [kc.put(b, copies=2) for b in blocks]
    arv = _arvados(urls)
    for loc, data in zip(locators, blocks, strict=True):
        assert arv.get(str(loc)) == data
        assert arv.head(str(loc)) is True


def test_we_read_what_arvados_wrote_and_find_it_where_arvados_put_it(stubs: list[KeepStub]) -> None:
    urls = " ".join(s.url for s in stubs)
    arv = _arvados(urls)
    with KeepClient(urls, token=TOKEN, retries=0) as kc:
        for i in range(10):
            data = b"written by arvados %d" % i
            text = arv.put(data, copies=2)
            loc = Locator.parse(text)
            assert kc.get(text) == data and kc.head(loc)
            # Same placement: the two replicas are on our two top-ranked services.
            top = [svc.root for svc in probe_order(loc, kc.services)[:2]]
            holders = [s.url for s in stubs if loc.md5 in s.blocks]
            assert sorted(holders) == sorted(top)
            probed = [s.url for s in stubs for r in s.requests if r[0] == "GET" and loc.md5 in r[1]]
            assert probed == top[:1], "the first probe hits"


def test_both_clients_send_the_same_put_headers(stubs: list[KeepStub]) -> None:
    urls = " ".join(s.url for s in stubs)
    _arvados(urls).put(b"arv", copies=2)
    with KeepClient(urls, token=TOKEN) as kc:
        kc.put(b"ours", copies=2)
    puts = [r[3] for s in stubs for r in s.requests if r[0] == "PUT"]
    arv_put, our_put = (next(h for h in puts if h["Content-Length"] == n) for n in ("3", "4"))
    for name in ("Authorization", "X-Keep-Desired-Replicas"):
        assert arv_put[name] == our_put[name]
    assert arv_put["X-Request-Id"][:4] == our_put["X-Request-Id"][:4] == "req-"
    assert len(our_put["X-Request-Id"]) == len(arv_put["X-Request-Id"])


def test_locators_agree_with_the_arvados_locator_parser(stubs: list[KeepStub]) -> None:
    with KeepClient([s.url for s in stubs]) as kc:
        loc = kc.put(b"same text")
    arv_loc = arvados.KeepLocator(str(loc))
    assert arv_loc.md5sum == loc.md5 == hashlib.md5(b"same text").hexdigest() and arv_loc.size == loc.size
