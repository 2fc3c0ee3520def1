"""KeepClient against loopback Keep servers: placement, verification, retries, faults, headers.

The servers are `KeepServer`\\ s with scripted `FaultPlan`\\ s; answers no Keep server gives (a
wrong locator, odd replica headers, no ``X-Keep-Locator``) and the headers a client sends
come from pytest-httpserver, which shows the raw wire.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse

from keepstore import (
    BlockNotFound,
    KeepClient,
    KeepError,
    LocalStore,
    Locator,
    ReadError,
    Service,
    Timeout,
    WriteError,
    probe_order,
)
from keepstore.client import HedgePolicy
from keepstore.locator import sign_locator
from keepstore.server import KeepServer
from keepstore.server.faults import Gate
from keepstore.store import Data
from keepstore.transport import MockTransport, Request, Response

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
FAST = Timeout(connect=1, read=1, min_bandwidth=100_000)
BLOCK_PATH = re.compile(r"/[0-9a-f]{32}")
# Tests here count requests: a hedge (by default after 0.1 s without a first byte, which a busy
# machine gives) would add one. RACED reads as by default, racing the replicas, and never hedges
# (faults decide who answers); test_hedged_reads tests hedging.
RACED = HedgePolicy(initial=5.0, floor=5.0, cap=5.0)
NO_HEDGE = HedgePolicy(enabled=False)


class Sleeps(list[float]):
    """An injectable sleep that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def servers_factory(tmp_path: Path) -> Iterator[Callable[..., list[KeepServer]]]:
    """``make(n, **options)``: *n* started `KeepServer`\\ s, each with its own volume."""
    made: list[KeepServer] = []

    def make(n: int, volumes: Callable[[Path], list[str | Path]] | None = None, **options: object) -> list[KeepServer]:
        new = []
        for _ in range(n):
            root = tmp_path / f"server{len(made)}"
            server = KeepServer(volumes(root) if volumes else [root], fsync=False, **options)  # type: ignore[arg-type]
            made.append(server)
            new.append(server.start())
        return new

    yield make
    for s in made:
        s.stop(grace=1)


@pytest.fixture
def wire_factory() -> Iterator[Callable[[int], list[HTTPServer]]]:
    """``make(n)``: *n* pytest-httpserver servers on 127.0.0.1, for answers no Keep server gives."""
    made: list[HTTPServer] = []

    def make(n: int) -> list[HTTPServer]:
        new = [HTTPServer(host="127.0.0.1", port=0) for _ in range(n)]
        for server in new:
            server.start()
        made.extend(new)
        return new

    yield make
    for server in made:
        server.clear()
        server.stop()


def answer_puts(server: HTTPServer, headers: dict[str, str], locator: str | None = None) -> None:
    """Make *server* answer every PUT 200 with the body's locator (or *locator*) and *headers*."""

    def put(request: WRequest) -> WResponse:
        data = request.get_data()
        text = locator or f"{hashlib.md5(data).hexdigest()}+{len(data)}"
        return WResponse(f"{text}\n", headers=headers)

    server.expect_request(BLOCK_PATH, method="PUT").respond_with_handler(put)


def sent(server: HTTPServer, method: str) -> list[dict[str, str]]:
    """The headers of every *method* request *server* received."""
    return [dict(request.headers) for request, _response in server.log if request.method == method]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def disk_services(servers: list[KeepServer] | list[str]) -> list[Service]:
    urls = [s if isinstance(s, str) else s.url for s in servers]
    return [Service(f"zzzzz-bi6l4-{i:015d}", url) for i, url in enumerate(urls)]


def ranked(loc: Locator | str, servers: list[KeepServer], services: list[Service]) -> list[KeepServer]:
    by_root = {s.url: s for s in servers}
    return [by_root[svc.root] for svc in probe_order(loc, services)]


def holds(server: KeepServer, loc: Locator) -> bool:
    return server.find(loc.md5, None) is not None


def stored(server: KeepServer) -> int:
    """How many blocks *server* stores."""
    return sum(1 for line in server.blocks.index("").splitlines() if line)


def count(server: KeepServer, method: str) -> int:
    return sum(1 for r in server.requests if r.method == method)


@pytest.fixture
def three(servers_factory: Callable[..., list[KeepServer]],
          sleeps: Sleeps) -> Iterator[tuple[KeepClient, list[KeepServer]]]:
    servers = servers_factory(3)
    with KeepClient(disk_services(servers), token=TOKEN, sleep=sleeps, timeout=FAST, hedge=RACED) as kc:
        yield kc, servers


@pytest.mark.parametrize("data", [b"foo", bytearray(b"bar"), memoryview(b"bazz"), "h\u00e9llo"])
def test_put_get_round_trip_for_every_input_type(three: tuple[KeepClient, list[KeepServer]], data: Data) -> None:
    kc, _ = three
    loc = kc.put(data)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    assert loc.md5 == hashlib.md5(raw).hexdigest() and loc.size == len(raw)
    assert kc.get(loc) == raw and kc.get(str(loc)) == raw
    assert kc.head(loc) is True and kc.exists(loc) is True


def test_replicas_land_exactly_on_the_two_top_ranked_of_five(servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(5)
    services = disk_services(servers)
    with KeepClient(services, token=TOKEN) as kc:
        for i in range(30):
            loc = kc.put(b"block %d" % i)
            order = ranked(loc, servers, services)
            assert [holds(s, loc) for s in order] == [True, True, False, False, False]
    assert all(count(s, "PUT") == stored(s) for s in servers), "one PUT per stored replica"
    assert sum(stored(s) for s in servers) == 60


def test_put_returns_the_servers_signed_locator(servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(2, signing_key="blob-signing-key")
    with KeepClient(disk_services(servers), token=TOKEN) as kc:
        loc = kc.put(b"signed")
    assert loc.md5 == hashlib.md5(b"signed").hexdigest() and loc.signature is not None
    hint = loc.permission_hint
    assert hint is not None  # signed for the token the client sent (so it sent it)
    assert loc == sign_locator(loc.bare(), key="blob-signing-key", token=TOKEN, expires_at=int(hint[-8:], 16))


def test_a_locator_for_other_data_is_not_accepted(servers_factory: Callable[..., list[KeepServer]],
                                                  wire_factory: Callable[[int], list[HTTPServer]],
                                                  sleeps: Sleeps) -> None:
    honest1, honest2 = servers_factory(2)
    (liar,) = wire_factory(1)  # answers every PUT with another block's locator
    answer_puts(liar, {"X-Keep-Replicas-Stored": "1"}, locator="acbd18db4cc2f85cedef654fccc4a4d8+3")
    uuids = [f"zzzzz-bi6l4-{i:015d}" for i in range(3)]
    top = probe_order(Locator.for_data(b"truth"), [Service(u, f"http://x{i}/") for i, u in enumerate(uuids)])[0]
    roots = iter([honest1.url, honest2.url])
    services = [Service(u, liar.url_for("/") if u == top.uuid else next(roots)) for u in uuids]
    with KeepClient(services, sleep=sleeps) as kc:
        result = kc.put_block(b"truth", copies=2)
    assert len(sent(liar, "PUT")) == 1, "the liar was asked first"
    assert set(result.services) == {honest1.url, honest2.url}
    assert result.locator.md5 == hashlib.md5(b"truth").hexdigest()


def test_get_retries_500_then_503_then_succeeds(three: tuple[KeepClient, list[KeepServer]], sleeps: Sleeps) -> None:
    kc, servers = three
    loc = kc.put(b"flaky", copies=3)
    for s in servers:
        s.faults.fail(500, methods="GET")
        s.faults.fail(503, methods="GET")
    assert kc.get(loc) == b"flaky"
    assert len(sleeps) == 2 and all(0 <= w <= 1.0 for w in sleeps)
    assert kc.stats().retries == 2


def test_all_404_raises_block_not_found_at_once(servers_factory: Callable[..., list[KeepServer]],
                                                sleeps: Sleeps) -> None:
    servers = servers_factory(3)
    with KeepClient([s.url for s in servers], retries=10, sleep=sleeps) as kc:
        with pytest.raises(BlockNotFound) as info:
            kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3", request_id="req-aaaaaaaaaaaaaaaaaaaa")
        assert sleeps == [] and sum(count(s, "GET") for s in servers) == 3  # one round, no wait
        assert kc.exists("acbd18db4cc2f85cedef654fccc4a4d8+3") is False
    assert "acbd18db4cc2f85cedef654fccc4a4d8+3" in str(info.value)
    assert "req-aaaaaaaaaaaaaaaaaaaa" in str(info.value)
    assert sum(count(s, "GET") for s in servers) == 3


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_bodies_are_never_returned_and_the_next_replica_is_read(
        three: tuple[KeepClient, list[KeepServer]], fault: str) -> None:
    kc, servers = three
    data = bytes(range(256)) * 100
    loc = kc.put(data, copies=2)
    holders = [s for s in ranked(loc, servers, kc.services) if holds(s, loc)]
    getattr(holders[0].faults, fault)()
    assert kc.get(loc) == data
    assert [r.fault for r in holders[0].requests if r.method == "GET"] == [fault]
    assert count(holders[1], "GET") == 1


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_bad_only_replica_is_a_read_error(three: tuple[KeepClient, list[KeepServer]], sleeps: Sleeps,
                                            fault: str) -> None:
    kc, servers = three
    loc = kc.put(b"lonely" * 1000, copies=1)
    holder = next(s for s in servers if holds(s, loc))
    getattr(holder.faults, fault)(times=100)
    kc.retry = kc.retry.__class__(total=2)
    with pytest.raises(ReadError) as info:
        kc.get(loc)
    assert not isinstance(info.value, BlockNotFound)
    assert count(holder, "GET") == 3


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_a_server_dripping_below_min_bandwidth_fails_in_bounded_time(
        servers_factory: Callable[..., list[KeepServer]]) -> None:
    (server,) = servers_factory(1)
    data = b"d" * 300_000
    with KeepClient([server.url], retries=0, timeout=FAST) as kc:
        loc = kc.put(data, copies=1)
        server.faults.throttle(10_000, methods="GET")
        start = time.monotonic()
        with pytest.raises(ReadError, match="slower than"):
            kc.get(loc)
    assert time.monotonic() - start < 10  # the whole drip takes 30 s


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_a_stalled_head_times_out(servers_factory: Callable[..., list[KeepServer]]) -> None:
    (server,) = servers_factory(1)
    with KeepClient([server.url], retries=0, timeout=FAST) as kc:
        loc = kc.put(b"x", copies=1)
        server.faults.stall(3, methods="HEAD")  # three times the read timeout
        start = time.monotonic()
        with pytest.raises(ReadError, match="no response within"):
            kc.head(loc)
    # The timeout fired before the stall ended (the HEAD would then have succeeded); the bound
    # is a hang guard with room for a busy machine.
    assert time.monotonic() - start < 8


def test_failing_top_ranked_service_is_routed_around_without_duplicate_puts(
        servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    servers = servers_factory(4)
    services = disk_services(servers)
    data = b"route around"
    order = ranked(Locator.for_data(data), servers, services)
    order[0].faults.fail(500, methods="PUT", times=100)
    with KeepClient(services, sleep=sleeps) as kc:
        result = kc.put_block(data, copies=2)
    assert set(result.services) == {order[1].url, order[2].url} and result.replicas == 2
    assert [count(s, "PUT") for s in order] == [1, 1, 1, 0]
    assert sleeps == []


def test_shortfall_raises_write_error_with_wanted_done_and_attempts(
        servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    good, bad = servers_factory(2)
    bad.faults.fail(503, methods="PUT", times=100)
    kc = KeepClient(disk_services([good, bad]), token=TOKEN, retries=3, sleep=sleeps)
    with kc, pytest.raises(WriteError) as info:
        kc.put(b"short", copies=2, request_id="req-bbbbbbbbbbbbbbbbbbbb")
    err = info.value
    assert (err.wanted, err.done) == (2, 1)
    assert count(good, "PUT") == 1, "never a second PUT to a service that confirmed"
    assert count(bad, "PUT") == 4 and len(sleeps) == 3
    assert err.attempts[bad.url] == ", ".join(["503 injected fault 503"] * 4)  # each round, with the reason
    assert err.attempts[good.url].startswith("200")
    assert "req-bbbbbbbbbbbbbbbbbbbb" in str(err) and "secret123" not in str(err)


def test_507_is_not_retried_on_that_service(servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    full, ok = servers_factory(2)
    full.faults.fail(507, methods="PUT", times=100)
    with KeepClient(disk_services([full, ok]), retries=5, sleep=sleeps) as kc:
        with pytest.raises(WriteError) as info:
            kc.put(b"full", copies=2)
        assert info.value.done == 1
        assert count(full, "PUT") == 1 and count(ok, "PUT") == 1
        assert sleeps == [], "nothing left that a retry could help"


def test_permanent_4xx_retires_the_service(servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    a, b, c = servers_factory(3)
    for s in (a, b, c):
        s.faults.fail(401, methods="PUT", times=10)
    with KeepClient(disk_services([a, b, c]), retries=5, sleep=sleeps) as kc, pytest.raises(WriteError):
        kc.put(b"denied")
    assert [count(s, "PUT") for s in (a, b, c)] == [1, 1, 1] and sleeps == []


def test_429_with_retry_after_waits_at_least_that_long(servers_factory: Callable[..., list[KeepServer]],
                                                       sleeps: Sleeps) -> None:
    (server,) = servers_factory(1)
    server.faults.fail(429, methods="PUT", retry_after=3)
    with KeepClient(disk_services([server]), sleep=sleeps) as kc:
        kc.put(b"throttled", copies=1)
    assert len(sleeps) == 1 and sleeps[0] >= 3
    assert [r.status for r in server.requests] == [429, 200]


def test_429_retry_after_honoured_on_reads_too(three: tuple[KeepClient, list[KeepServer]], sleeps: Sleeps) -> None:
    kc, servers = three
    loc = kc.put(b"r", copies=3)
    for s in servers:
        s.faults.fail(429, methods="GET", retry_after=2)
    assert kc.get(loc) == b"r" and sleeps and sleeps[0] >= 2


def test_proxy_reporting_two_replicas_satisfies_two_copies_with_one_put(
        wire_factory: Callable[[int], list[HTTPServer]]) -> None:
    proxies = wire_factory(2)
    for p in proxies:
        answer_puts(p, {"X-Keep-Replicas-Stored": "2"})
    with KeepClient([p.url_for("/") for p in proxies]) as kc:
        result = kc.put_block(b"proxied", copies=2)
    assert result.replicas == 2 and sum(len(sent(p, "PUT")) for p in proxies) == 1


def test_url_services_are_written_in_parallel_once_one_stores_a_single_replica(
        servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(3)  # plain URLs: typed proxy, each answering "1 stored"
    learning, parallel = Gate(), Gate()
    for s in servers:  # a slow peer: 0.3 s for each PUT, long enough for a second one to overlap
        s.faults.hold(learning, methods="PUT", timeout=0.3)
    with KeepClient([s.url for s in servers]) as kc, ThreadPoolExecutor(1) as pool:
        first = kc.put_block(b"learns", copies=2)
        assert (learning.arrived, learning.peak) == (2, 1), "the first put asks one service at a time"
        for s in servers:
            s.faults.clear()
            s.faults.hold(parallel, methods="PUT")
        second = pool.submit(kc.put_block, b"then goes parallel", copies=2)
        parallel.wait_for(2)  # both copies are at their servers at once, neither answered
        parallel.open()
        assert second.result(timeout=30).replicas == first.replicas == 2
    assert sum(count(s, "PUT") for s in servers) == 4


def test_missing_replicas_header_counts_one_and_disk_counts_at_most_one(
        wire_factory: Callable[[int], list[HTTPServer]]) -> None:
    quiet, boastful = wire_factory(2), wire_factory(2)
    for w in quiet:
        answer_puts(w, {})
    for w in boastful:
        answer_puts(w, {"X-Keep-Replicas-Stored": "3"})
    with KeepClient(disk_services([w.url_for("/") for w in quiet])) as kc:
        assert kc.put_block(b"q", copies=2).replicas == 2
    assert sum(len(sent(w, "PUT")) for w in quiet) == 2
    with KeepClient(disk_services([w.url_for("/") for w in boastful])) as kc:
        result = kc.put_block(b"b", copies=2)
    assert result.replicas == 2 and sum(len(sent(w, "PUT")) for w in boastful) == 2


def test_storage_classes_are_sent_and_confirmations_parsed(servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(2, volumes=lambda root: [f"{root}-hot:hot", f"{root}-archive:archive",
                                                       f"{root}-other:default"])
    loc = Locator.for_data(b"classy")
    with KeepClient(disk_services(servers)) as kc:
        result = kc.put_block(b"classy", copies=2, storage_classes=["hot", "archive"])
    assert dict(result.storage_classes) == {"hot": 2, "archive": 2}
    for s in servers:  # each server was asked for both classes: a copy on each of those volumes
        assert sorted(c for f in s.blocks.locate(loc.md5, loc.size) for c in f.volume.classes) == ["archive", "hot"]


def test_read_only_services_are_never_written(servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(3)
    services = [Service(f"zzzzz-bi6l4-{i:015d}", s.url, read_only=(i == 0)) for i, s in enumerate(servers)]
    with KeepClient(services) as kc:
        for i in range(10):
            kc.put(b"%d" % i)
    assert count(servers[0], "PUT") == 0 and stored(servers[1]) == stored(servers[2]) == 10


def test_headers_sent(wire_factory: Callable[[int], list[HTTPServer]]) -> None:
    (proxy,) = wire_factory(1)  # one proxy storing both copies: the raw headers of each method
    data = b"hdr"
    loc = Locator.for_data(data)
    answer_puts(proxy, {"X-Keep-Replicas-Stored": "2"})
    proxy.expect_request(f"/{loc}", method="GET").respond_with_data(data)
    proxy.expect_request(f"/{loc}", method="HEAD").respond_with_data(b"", headers={"Content-Length": "3"})
    with KeepClient([proxy.url_for("/")], token=TOKEN) as kc:
        kc.put(data, copies=2, request_id="req-cccccccccccccccccccc")
        assert kc.get(loc) == data and kc.head(loc) is True
    (put,), (get,), (head,) = sent(proxy, "PUT"), sent(proxy, "GET"), sent(proxy, "HEAD")
    assert put["Authorization"] == f"Bearer {TOKEN}" and put["X-Keep-Desired-Replicas"] == "2"
    assert put["X-Request-Id"] == "req-cccccccccccccccccccc"
    assert re.fullmatch(r"req-[0-9a-z]{20}", get["X-Request-Id"])
    assert get["Accept"] == head["Accept"] == "application/octet-stream"


def test_unreachable_service_is_routed_around_for_reads(servers_factory: Callable[..., list[KeepServer]],
                                                        sleeps: Sleeps) -> None:
    servers = servers_factory(3)
    services = disk_services(servers)
    with KeepClient(services, sleep=sleeps, timeout=FAST) as kc:
        loc = kc.put(b"survivor", copies=2)
        holders = [s for s in ranked(loc, servers, services) if holds(s, loc)]
        holders[0].stop()
        assert kc.get(loc) == b"survivor"
        assert kc.stats().failures.get(holders[0].url) == 1
    assert sleeps == []


def test_connect_timeout_grows_per_round() -> None:
    seen: list[float] = []

    def flaky(request: Request) -> Response:
        seen.append(request.timeout.connect)
        return Response(503) if len(seen) < 4 else Response(200, body=b"foo")

    with KeepClient(["http://127.0.0.1:9/"], transport=MockTransport(flaky), sleep=lambda s: None,
                    timeout=Timeout(connect=2, max_connect=10)) as kc:
        assert kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3") == b"foo"
    assert seen == [2, 4, 8, 10]


def test_token_never_in_errors_or_repr(servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    (server,) = servers_factory(1)
    server.faults.fail(500, methods="GET", times=10)
    with KeepClient([server.url], token=TOKEN, retries=1, sleep=sleeps) as kc:
        assert "secret123" not in repr(kc)
        with pytest.raises(ReadError) as info:
            kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
    assert "secret123" not in str(info.value) and "secret123" not in repr(info.value.attempts)
    assert [r.status for r in server.requests] == [500, 500]


class DictCache:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    def get(self, locator: Locator) -> bytes | None:
        self.gets += 1
        return self.data.get(locator.md5)

    def put(self, locator: Locator, data: bytes) -> None:
        self.data[locator.md5] = data


def test_cache_is_consulted_first_and_filled_after_verified_reads(
        servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(2)
    cache = DictCache()
    with KeepClient(disk_services(servers), cache=cache, hedge=RACED) as kc:
        loc = kc.put(b"cached")
        assert kc.get(loc) == b"cached" and cache.data[loc.md5] == b"cached"
        gets = sum(count(s, "GET") for s in servers)
        assert kc.get(loc) == b"cached"
        assert sum(count(s, "GET") for s in servers) == gets and kc.stats().cache_hits == 1


def test_stats_count_bytes_and_requests(three: tuple[KeepClient, list[KeepServer]]) -> None:
    kc, _ = three
    loc = kc.put(b"12345", copies=2)
    kc.get(loc)
    stats = kc.stats()
    assert stats.bytes_up == 10 and stats.requests == 3 and stats.bytes_down >= 5


def test_closed_client_refuses_work(servers_factory: Callable[..., list[KeepServer]]) -> None:
    (server,) = servers_factory(1)
    kc = KeepClient([server.url])
    kc.put(b"x", copies=1)
    kc.close()
    kc.close()
    with pytest.raises(KeepError, match="closed"):
        kc.put(b"y")
    assert count(server, "PUT") == 1


def test_empty_block_needs_no_request(three: tuple[KeepClient, list[KeepServer]]) -> None:
    kc, servers = three
    assert kc.get("d41d8cd98f00b204e9800998ecf8427e+0") == b""
    assert kc.head("d41d8cd98f00b204e9800998ecf8427e+0") is True
    assert all(not s.requests for s in servers)


def test_from_env_with_keep_services(servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(2)
    env = {"KEEP_SERVICES": " ".join(s.url for s in servers), "KEEP_TOKEN": TOKEN, "HOME": "/nonexistent"}
    kc = KeepClient.from_env(env, copies=1)
    assert isinstance(kc, KeepClient)
    with kc:
        assert kc.copies == 1
        assert [s.root for s in kc.services] == [s.url for s in servers]
        assert kc.get(kc.put(b"env")) == b"env"


def test_from_env_arvados_keep_proxy(servers_factory: Callable[..., list[KeepServer]]) -> None:
    (server,) = servers_factory(1)
    kc = KeepClient.from_env({"ARVADOS_KEEP_PROXY": server.url, "HOME": "/nonexistent"})
    assert isinstance(kc, KeepClient)
    with kc:
        assert [s.service_type for s in kc.services] == ["proxy"]


def test_from_env_with_nothing_is_a_local_store(tmp_path: object) -> None:
    store = KeepClient.from_env({"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)})
    assert isinstance(store, LocalStore)


def test_keep_client_is_a_block_store() -> None:
    from keepstore.store import BlockStore

    assert issubclass(KeepClient, BlockStore)


def test_the_examples_in_docs_client_md_run() -> None:
    import doctest

    path = Path(__file__).resolve().parents[2] / "docs" / "client.md"
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_concurrent_reads_through_a_block_cache_download_once(
        servers_factory: Callable[..., list[KeepServer]]) -> None:
    from keepstore import MemoryBlockCache

    servers = servers_factory(2)
    data = b"popular" * 100_000
    # Hedging off: the held download would be hedged to the other server (held too).
    with KeepClient(disk_services(servers), cache=MemoryBlockCache(max_bytes=1 << 24), hedge=NO_HEDGE) as kc:
        loc = kc.put(data)
        gate = Gate()
        for s in servers:
            s.faults.hold(gate, methods="GET", times=8)
        start = threading.Barrier(8)

        def read(_: int) -> bytes:
            start.wait(timeout=10)  # all eight ask at once
            return kc.get(loc)

        with ThreadPoolExecutor(8) as pool:
            results = [pool.submit(read, i) for i in range(8)]
            gate.wait_for(1)  # one download is held at its server while the other seven ask
            assert not any(r.done() for r in results)
            gate.open()
            assert all(r.result(timeout=30) == data for r in results)
        assert gate.arrived == 1 and sum(count(s, "GET") for s in servers) == 1
        assert kc.stats().cache_hits == 7


def test_refresh_signature_needs_an_x_keep_locator_for_the_same_block(
        servers_factory: Callable[..., list[KeepServer]]) -> None:
    servers = servers_factory(2)  # no signing key: HEAD 200 without X-Keep-Locator, as an old server
    with KeepClient(disk_services(servers), retries=0) as kc:
        loc = kc.put(b"old server", copies=2)
        with pytest.raises(ReadError, match="without a valid X-Keep-Locator"):
            kc.refresh_signature(loc)
    assert sum(count(s, "HEAD") for s in servers) >= 1


def test_refresh_signature_asks_for_a_local_signature(wire_factory: Callable[[int], list[HTTPServer]]) -> None:
    (old,) = wire_factory(1)
    loc = Locator.for_data(b"old server")
    old.expect_request(f"/{loc}", method="HEAD").respond_with_data(b"", headers={"Content-Length": str(loc.size)})
    with KeepClient(disk_services([old.url_for("/")]), retries=0) as kc, \
            pytest.raises(ReadError, match="without a valid X-Keep-Locator"):
        kc.refresh_signature(loc)
    heads = sent(old, "HEAD")
    assert heads and all(re.fullmatch(r"local, \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", h["X-Keep-Signature"]) for h in heads)


def test_closing_the_client_stops_a_read_in_flight_without_retry_rounds(
        servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    """Regression: after close() the transport refuses requests, which counted as transient
    failures, so a get running in another thread went through every retry round."""
    servers = servers_factory(2)
    kc = KeepClient([s.url for s in servers], sleep=sleeps, retries=10, timeout=Timeout(connect=1, read=1))
    gate = Gate()
    for s in servers:
        s.faults.hold(gate, methods="GET", timeout=1.5)  # slower than the read timeout
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            kc.get("abf7f0c50f9f08c680c97d669f346e3c+1000")
        except ReadError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    gate.wait_for(1)  # the read is in flight: its GET is held at a server
    kc.close()
    gate.open()
    reader.join(30)
    assert outcome and "the client was closed" in str(outcome[0])
    assert sleeps == []


def test_a_put_that_cannot_reach_its_copies_fails_at_once_without_retry_rounds(
        servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    """Regression: with two disk services, one refusing (403) and one busy (503), copies=2 can
    never be reached, yet the writer slept through every retry round before failing."""
    refusing, busy = servers_factory(2)
    refusing.faults.fail(403, methods="PUT", times=100)
    busy.faults.fail(503, methods="PUT", times=100)
    with KeepClient(disk_services([refusing, busy]), sleep=sleeps, retries=10) as kc, \
            pytest.raises(WriteError, match="no service left that could store the rest") as info:
        kc.put(b"two copies wanted", copies=2)
    assert info.value.wanted == 2 and info.value.done == 0 and sleeps == []


def test_a_put_on_a_kept_alive_connection_the_server_dropped_is_resent_by_libcurl(
        servers_factory: Callable[..., list[KeepServer]], sleeps: Sleeps) -> None:
    """Regression: without a seek callback libcurl could not rewind the body to resend the PUT
    on a new connection ("curl error 65"), so a dropped idle connection failed the put."""
    [server] = servers_factory(1)
    with KeepClient(disk_services([server]), sleep=sleeps, retries=0) as kc:
        kc.put(b"opens the connection", copies=1)
        server.faults.drop(methods="PUT")
        result = kc.put_block(b"second" * 1000, copies=1)
    assert result.replicas == 1 and sleeps == [] and count(server, "PUT") == 3
    assert [r.fault for r in server.requests] == [None, "drop", None]
