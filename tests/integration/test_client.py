"""KeepClient against loopback Keep stubs: placement, verification, retries, faults, headers."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator

import pytest
from keepstub import KeepStub

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
from keepstore.store import Data
from keepstore.transport import MockTransport, Request, Response

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
FAST = Timeout(connect=1, read=1, min_bandwidth=100_000)


class Sleeps(list[float]):
    """An injectable sleep that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def stubs_factory() -> Iterator[Callable[..., list[KeepStub]]]:
    made: list[KeepStub] = []

    def make(n: int, **kw: object) -> list[KeepStub]:
        new = [KeepStub(**kw) for _ in range(n)]  # type: ignore[arg-type]
        made.extend(new)
        return new

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def disk_services(stubs: list[KeepStub]) -> list[Service]:
    return [Service(f"zzzzz-bi6l4-{i:015d}", s.url) for i, s in enumerate(stubs)]


def ranked(loc: Locator | str, stubs: list[KeepStub], services: list[Service]) -> list[KeepStub]:
    by_root = {s.url: s for s in stubs}
    return [by_root[svc.root] for svc in probe_order(loc, services)]


@pytest.fixture
def three(stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> Iterator[tuple[KeepClient, list[KeepStub]]]:
    stubs = stubs_factory(3)
    with KeepClient(disk_services(stubs), token=TOKEN, sleep=sleeps, timeout=FAST) as kc:
        yield kc, stubs


@pytest.mark.parametrize("data", [b"foo", bytearray(b"bar"), memoryview(b"bazz"), "h\u00e9llo"])
def test_put_get_round_trip_for_every_input_type(three: tuple[KeepClient, list[KeepStub]], data: Data) -> None:
    kc, _ = three
    loc = kc.put(data)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    assert loc.md5 == hashlib.md5(raw).hexdigest() and loc.size == len(raw)
    assert kc.get(loc) == raw and kc.get(str(loc)) == raw
    assert kc.head(loc) is True and kc.exists(loc) is True


def test_replicas_land_exactly_on_the_two_top_ranked_of_five(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(5)
    services = disk_services(stubs)
    with KeepClient(services, token=TOKEN) as kc:
        for i in range(30):
            loc = kc.put(b"block %d" % i)
            order = ranked(loc, stubs, services)
            assert [loc.md5 in s.blocks for s in order] == [True, True, False, False, False]
    assert all(s.count("PUT") == sum(1 for _ in s.blocks) for s in stubs), "one PUT per stored replica"


def test_put_returns_the_servers_signed_locator(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    sig = "A" + "1" * 40 + "@7fffffff"
    stubs = stubs_factory(2, sign=lambda loc: f"{loc}+{sig}")
    with KeepClient(disk_services(stubs), token=TOKEN) as kc:
        loc = kc.put(b"signed")
    assert loc.signature == "1" * 40 and loc.md5 == hashlib.md5(b"signed").hexdigest()


def test_a_locator_for_other_data_is_not_accepted(stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    liar, honest1, honest2 = stubs_factory(3)
    liar.sign = lambda loc: "acbd18db4cc2f85cedef654fccc4a4d8+3"
    with KeepClient(disk_services([liar, honest1, honest2]), sleep=sleeps) as kc:
        result = kc.put_block(b"truth", copies=2)
    assert set(result.services) == {honest1.url, honest2.url}
    assert result.locator.md5 == hashlib.md5(b"truth").hexdigest()


def test_get_retries_500_then_503_then_succeeds(three: tuple[KeepClient, list[KeepStub]], sleeps: Sleeps) -> None:
    kc, stubs = three
    loc = kc.put(b"flaky", copies=3)
    for s in stubs:
        s.fail("status", 500, methods="GET")
        s.fail("status", 503, methods="GET")
    assert kc.get(loc) == b"flaky"
    assert len(sleeps) == 2 and all(0 <= w <= 1.0 for w in sleeps)
    assert kc.stats().retries == 2


def test_all_404_raises_block_not_found_at_once(stubs_factory: Callable[..., list[KeepStub]],
                                                sleeps: Sleeps) -> None:
    stubs = stubs_factory(3)
    with KeepClient([s.url for s in stubs], retries=10, sleep=sleeps) as kc:
        with pytest.raises(BlockNotFound) as info:
            kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3", request_id="req-aaaaaaaaaaaaaaaaaaaa")
        assert sleeps == [] and sum(s.count("GET") for s in stubs) == 3  # one round, no wait
        assert kc.exists("acbd18db4cc2f85cedef654fccc4a4d8+3") is False
    assert "acbd18db4cc2f85cedef654fccc4a4d8+3" in str(info.value)
    assert "req-aaaaaaaaaaaaaaaaaaaa" in str(info.value)
    assert sum(s.count("GET") for s in stubs) == 3


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_bad_bodies_are_never_returned_and_the_next_replica_is_read(
        three: tuple[KeepClient, list[KeepStub]], fault: str) -> None:
    kc, stubs = three
    data = bytes(range(256)) * 100
    loc = kc.put(data, copies=2)
    holders = [s for s in ranked(loc, stubs, kc.services) if loc.md5 in s.blocks]
    holders[0].fail(fault, methods="GET")
    assert kc.get(loc) == data
    assert holders[1].count("GET") == 1


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_bad_only_replica_is_a_read_error(three: tuple[KeepClient, list[KeepStub]], sleeps: Sleeps,
                                            fault: str) -> None:
    kc, stubs = three
    loc = kc.put(b"lonely" * 1000, copies=1)
    holder = next(s for s in stubs if loc.md5 in s.blocks)
    holder.fail(fault, methods="GET", times=100)
    kc.retry = kc.retry.__class__(total=2)
    with pytest.raises(ReadError) as info:
        kc.get(loc)
    assert not isinstance(info.value, BlockNotFound)
    assert holder.count("GET") == 3


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_a_server_dripping_below_min_bandwidth_fails_in_bounded_time(
        stubs_factory: Callable[..., list[KeepStub]]) -> None:
    (stub,) = stubs_factory(1)
    data = b"d" * 300_000
    with KeepClient([stub.url], retries=0, timeout=FAST) as kc:
        loc = kc.put(data, copies=1)
        stub.fail("drip", 10_000, methods="GET")
        start = time.monotonic()
        with pytest.raises(ReadError, match="slower than"):
            kc.get(loc)
    assert time.monotonic() - start < 3.5


@pytest.mark.wall_clock  # a timeout's bound is the behaviour under test
def test_a_stalled_head_times_out(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    (stub,) = stubs_factory(1)
    with KeepClient([stub.url], retries=0, timeout=FAST) as kc:
        loc = kc.put(b"x", copies=1)
        stub.fail("stall", 5, methods="HEAD")
        start = time.monotonic()
        with pytest.raises(ReadError, match="no response within"):
            kc.head(loc)
    assert time.monotonic() - start < 3.5


def test_failing_top_ranked_service_is_routed_around_without_duplicate_puts(
        stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    stubs = stubs_factory(4)
    services = disk_services(stubs)
    data = b"route around"
    order = ranked(Locator.for_data(data), stubs, services)
    order[0].fail("status", 500, methods="PUT", times=100)
    with KeepClient(services, sleep=sleeps) as kc:
        result = kc.put_block(data, copies=2)
    assert set(result.services) == {order[1].url, order[2].url} and result.replicas == 2
    assert [s.count("PUT") for s in order] == [1, 1, 1, 0]
    assert sleeps == []


def test_shortfall_raises_write_error_with_wanted_done_and_attempts(
        stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    good, bad = stubs_factory(2)
    bad.fail("status", 503, methods="PUT", times=100)
    kc = KeepClient(disk_services([good, bad]), token=TOKEN, retries=3, sleep=sleeps)
    with kc, pytest.raises(WriteError) as info:
        kc.put(b"short", copies=2, request_id="req-bbbbbbbbbbbbbbbbbbbb")
    err = info.value
    assert (err.wanted, err.done) == (2, 1)
    assert good.count("PUT") == 1, "never a second PUT to a service that confirmed"
    assert bad.count("PUT") == 4 and len(sleeps) == 3
    assert err.attempts[bad.url] == "503, 503, 503, 503" and err.attempts[good.url].startswith("200")
    assert "req-bbbbbbbbbbbbbbbbbbbb" in str(err) and "secret123" not in str(err)


def test_507_is_not_retried_on_that_service(stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    full, ok = stubs_factory(2)
    full.fail("status", 507, methods="PUT", times=100)
    with KeepClient(disk_services([full, ok]), retries=5, sleep=sleeps) as kc:
        with pytest.raises(WriteError) as info:
            kc.put(b"full", copies=2)
        assert info.value.done == 1
        assert full.count("PUT") == 1 and ok.count("PUT") == 1
        assert sleeps == [], "nothing left that a retry could help"


def test_permanent_4xx_retires_the_service(stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    a, b, c = stubs_factory(3)
    for s in (a, b, c):
        s.fail("status", 401, methods="PUT", times=10)
    with KeepClient(disk_services([a, b, c]), retries=5, sleep=sleeps) as kc, pytest.raises(WriteError):
        kc.put(b"denied")
    assert [s.count("PUT") for s in (a, b, c)] == [1, 1, 1] and sleeps == []


def test_429_with_retry_after_waits_at_least_that_long(stubs_factory: Callable[..., list[KeepStub]],
                                                       sleeps: Sleeps) -> None:
    (stub,) = stubs_factory(1)
    stub.fail("status", 429, {"Retry-After": "3"}, methods="PUT")
    with KeepClient(disk_services([stub]), sleep=sleeps) as kc:
        kc.put(b"throttled", copies=1)
    assert len(sleeps) == 1 and sleeps[0] >= 3


def test_429_retry_after_honoured_on_reads_too(three: tuple[KeepClient, list[KeepStub]], sleeps: Sleeps) -> None:
    kc, stubs = three
    loc = kc.put(b"r", copies=3)
    for s in stubs:
        s.fail("status", 429, {"Retry-After": "2"}, methods="GET")
    assert kc.get(loc) == b"r" and sleeps and sleeps[0] >= 2


def test_proxy_reporting_two_replicas_satisfies_two_copies_with_one_put(
        stubs_factory: Callable[..., list[KeepStub]]) -> None:
    p1, p2 = stubs_factory(2, replicas_header="2")
    with KeepClient([p1.url, p2.url]) as kc:
        result = kc.put_block(b"proxied", copies=2)
    assert result.replicas == 2 and p1.count("PUT") + p2.count("PUT") == 1


def test_url_services_are_written_in_parallel_once_one_stores_a_single_replica(
        stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(3)  # plain URLs: typed proxy, each answering "1 stored"
    with KeepClient([s.url for s in stubs]) as kc:
        for s in stubs:
            s.fail("delay", 0.3, methods="PUT", times=4)
        first = kc.put_block(b"learns", copies=2)
        second = kc.put_block(b"then goes parallel", copies=2)
    assert first.replicas == second.replicas == 2
    spans = sorted(span for s in stubs for span in s.put_spans)
    assert len(spans) == 4
    (_a1, e1), (a2, _e2), (_a3, e3), (a4, _e4) = spans
    assert a2 >= e1, "the first put asks one service at a time until it learns"
    assert a4 < e3, "the second put sends both copies at once"


def test_missing_replicas_header_counts_one_and_disk_counts_at_most_one(
        stubs_factory: Callable[..., list[KeepStub]]) -> None:
    quiet = stubs_factory(2, replicas_header=None)
    boastful = stubs_factory(2, replicas_header="3")
    with KeepClient(disk_services(quiet)) as kc:
        assert kc.put_block(b"q", copies=2).replicas == 2
    with KeepClient(disk_services(boastful)) as kc:
        result = kc.put_block(b"b", copies=2)
    assert result.replicas == 2 and sum(s.count("PUT") for s in boastful) == 2


def test_storage_classes_are_sent_and_confirmations_parsed(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(2, classes_header="hot=1; archive=1")
    with KeepClient(disk_services(stubs)) as kc:
        result = kc.put_block(b"classy", copies=2, storage_classes=["hot", "archive"])
    assert dict(result.storage_classes) == {"hot": 2, "archive": 2}
    sent = [r[3] for s in stubs for r in s.requests if r[0] == "PUT"]
    assert all(h["X-Keep-Storage-Classes"] == "archive, hot" for h in sent)


def test_read_only_services_are_never_written(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(3)
    services = [Service(f"zzzzz-bi6l4-{i:015d}", s.url, read_only=(i == 0)) for i, s in enumerate(stubs)]
    with KeepClient(services) as kc:
        for i in range(10):
            kc.put(b"%d" % i)
    assert stubs[0].count("PUT") == 0 and len(stubs[1].blocks) == len(stubs[2].blocks) == 10


def test_headers_sent(three: tuple[KeepClient, list[KeepStub]]) -> None:
    kc, stubs = three
    loc = kc.put(b"hdr", copies=2, request_id="req-cccccccccccccccccccc")
    kc.get(loc)
    kc.head(loc)
    by_method = {r[0]: r[3] for s in stubs for r in s.requests}
    put, get, head = by_method["PUT"], by_method["GET"], by_method["HEAD"]
    assert put["Authorization"] == f"Bearer {TOKEN}" and put["X-Keep-Desired-Replicas"] == "2"
    assert put["X-Request-Id"] == "req-cccccccccccccccccccc"
    assert re.fullmatch(r"req-[0-9a-z]{20}", get["X-Request-Id"])
    assert get["Accept"] == head["Accept"] == "application/octet-stream"


def test_unreachable_service_is_routed_around_for_reads(stubs_factory: Callable[..., list[KeepStub]],
                                                        sleeps: Sleeps) -> None:
    stubs = stubs_factory(3)
    services = disk_services(stubs)
    with KeepClient(services, sleep=sleeps, timeout=FAST) as kc:
        loc = kc.put(b"survivor", copies=2)
        holders = [s for s in ranked(loc, stubs, services) if loc.md5 in s.blocks]
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


def test_token_never_in_errors_or_repr(stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    (stub,) = stubs_factory(1)
    stub.fail("status", 500, methods="GET", times=10)
    with KeepClient([stub.url], token=TOKEN, retries=1, sleep=sleeps) as kc:
        assert "secret123" not in repr(kc)
        with pytest.raises(ReadError) as info:
            kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
    assert "secret123" not in str(info.value) and "secret123" not in repr(info.value.attempts)


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
        stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(2)
    cache = DictCache()
    with KeepClient(disk_services(stubs), cache=cache) as kc:
        loc = kc.put(b"cached")
        assert kc.get(loc) == b"cached" and cache.data[loc.md5] == b"cached"
        gets = sum(s.count("GET") for s in stubs)
        assert kc.get(loc) == b"cached"
        assert sum(s.count("GET") for s in stubs) == gets and kc.stats().cache_hits == 1


def test_stats_count_bytes_and_requests(three: tuple[KeepClient, list[KeepStub]]) -> None:
    kc, _ = three
    loc = kc.put(b"12345", copies=2)
    kc.get(loc)
    stats = kc.stats()
    assert stats.bytes_up == 10 and stats.requests == 3 and stats.bytes_down >= 5


def test_closed_client_refuses_work(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    (stub,) = stubs_factory(1)
    kc = KeepClient([stub.url])
    kc.put(b"x", copies=1)
    kc.close()
    kc.close()
    with pytest.raises(KeepError, match="closed"):
        kc.put(b"y")


def test_empty_block_needs_no_request(three: tuple[KeepClient, list[KeepStub]]) -> None:
    kc, stubs = three
    assert kc.get("d41d8cd98f00b204e9800998ecf8427e+0") == b""
    assert kc.head("d41d8cd98f00b204e9800998ecf8427e+0") is True
    assert all(not s.requests for s in stubs)


def test_from_env_with_keep_services(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(2)
    env = {"KEEP_SERVICES": " ".join(s.url for s in stubs), "KEEP_TOKEN": TOKEN, "HOME": "/nonexistent"}
    kc = KeepClient.from_env(env, copies=1)
    assert isinstance(kc, KeepClient)
    with kc:
        assert kc.copies == 1
        assert [s.root for s in kc.services] == [s.url for s in stubs]
        assert kc.get(kc.put(b"env")) == b"env"


def test_from_env_arvados_keep_proxy(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    (stub,) = stubs_factory(1)
    kc = KeepClient.from_env({"ARVADOS_KEEP_PROXY": stub.url, "HOME": "/nonexistent"})
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
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "client.md"
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_concurrent_reads_through_a_block_cache_download_once(stubs_factory: Callable[..., list[KeepStub]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from keepstore import MemoryBlockCache

    stubs = stubs_factory(2)
    data = b"popular" * 100_000
    with KeepClient(disk_services(stubs), cache=MemoryBlockCache(max_bytes=1 << 24)) as kc:
        loc = kc.put(data)
        for s in stubs:
            s.fail("delay", 0.3, methods="GET", times=8)  # slow enough that all eight overlap
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: kc.get(loc), range(8)))
        assert all(r == data for r in results)
        assert sum(s.count("GET") for s in stubs) == 1
        assert kc.stats().cache_hits == 7


def test_refresh_signature_needs_an_x_keep_locator_for_the_same_block(
        stubs_factory: Callable[..., list[KeepStub]]) -> None:
    stubs = stubs_factory(2)  # stubs answer HEAD 200 without X-Keep-Locator, as an old server might
    with KeepClient(disk_services(stubs), retries=0) as kc:
        loc = kc.put(b"old server", copies=2)
        with pytest.raises(ReadError, match="without a valid X-Keep-Locator"):
            kc.refresh_signature(loc)
        sent = [r[3] for s in stubs for r in s.requests if r[0] == "HEAD"]
        assert sent and all(h["X-Keep-Signature"].startswith("local, ") and h["X-Keep-Signature"].endswith("Z")
                            for h in sent)


def test_closing_the_client_stops_a_read_in_flight_without_retry_rounds(
        stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    """Regression: after close() the transport refuses requests, which counted as transient
    failures, so a get running in another thread went through every retry round."""
    import threading

    stubs = stubs_factory(2)
    kc = KeepClient([s.url for s in stubs], sleep=sleeps, retries=10, timeout=Timeout(connect=1, read=1))
    for s in stubs:
        s.fail("stall", 1.5, methods="GET")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            kc.get("abf7f0c50f9f08c680c97d669f346e3c+1000")
        except ReadError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not any(s.count("GET") for s in stubs):  # the read is in flight: its GET is stalled
        assert time.monotonic() < deadline, "the read never reached a service"
        threading.Event().wait(0.005)
    kc.close()
    reader.join(30)
    assert outcome and "the client was closed" in str(outcome[0])
    assert sleeps == []


def test_a_put_that_cannot_reach_its_copies_fails_at_once_without_retry_rounds(
        stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    """Regression: with two disk services, one refusing (403) and one busy (503), copies=2 can
    never be reached, yet the writer slept through every retry round before failing."""
    refusing, busy = stubs_factory(2)
    refusing.fail("status", 403, methods="PUT", times=100)
    busy.fail("status", 503, methods="PUT", times=100)
    with KeepClient(disk_services([refusing, busy]), sleep=sleeps, retries=10) as kc, \
            pytest.raises(WriteError, match="no service left that could store the rest") as info:
        kc.put(b"two copies wanted", copies=2)
    assert info.value.wanted == 2 and info.value.done == 0 and sleeps == []


def test_a_put_on_a_kept_alive_connection_the_server_dropped_is_resent_by_libcurl(
        stubs_factory: Callable[..., list[KeepStub]], sleeps: Sleeps) -> None:
    """Regression: without a seek callback libcurl could not rewind the body to resend the PUT
    on a new connection ("curl error 65"), so a dropped idle connection failed the put."""
    [stub] = stubs_factory(1)
    with KeepClient(disk_services([stub]), sleep=sleeps, retries=0) as kc:
        kc.put(b"opens the connection", copies=1)
        stub.fail("drop", methods="PUT")
        result = kc.put_block(b"second" * 1000, copies=1)
    assert result.replicas == 1 and sleeps == [] and stub.count("PUT") == 3
