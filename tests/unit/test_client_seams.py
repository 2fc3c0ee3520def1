"""The client's seams: Retry decides exhaustion and keeps history, one cache path, narrow faces."""

from __future__ import annotations

import importlib
import sys
from concurrent.futures import Future

import pytest

from keepstore import KeepClient, KeepError, Locator, MemoryBlockCache, ReadError, Retry
from keepstore.batch import RAISE_FIRST, Batch, Raise, check_policy
from keepstore.cache import BlockCache, ForeignCache, as_block_cache
from keepstore.transport import MockTransport, Request, Response

DATA = b"seams"
LOC = Locator.for_data(DATA)


def test_retry_increment_raises_the_given_error_once_exhausted() -> None:
    retry = Retry(total=2).increment(ValueError("one")).increment(ValueError("two"))
    with pytest.raises(ValueError, match="three"):
        retry.increment(ValueError("three"))


def test_retry_keeps_the_history_of_failed_rounds() -> None:
    retry = Retry(total=3).increment(KeepError("503 from a"), retry_after=2.0).increment(KeepError("timeout"))
    assert [(r.error, r.retry_after) for r in retry.history] == [("503 from a", 2.0), ("timeout", None)]
    assert retry.remaining == 1 and not retry.is_exhausted


def test_retry_history_does_not_change_equality() -> None:
    assert Retry(total=3).increment() == Retry(total=3, attempt=1)


def test_a_read_makes_exactly_total_plus_one_rounds_when_every_round_fails() -> None:
    calls: list[Request] = []

    def busy(request: Request) -> Response:
        calls.append(request)
        return Response(503)

    with KeepClient(["http://127.0.0.1:1"], retries=3, transport=MockTransport(busy), sleep=lambda s: None) as kc:
        with pytest.raises(ReadError, match="after 4 round"):
            kc.get(LOC)
        assert len(calls) == 4 and kc.stats().retries == 3


class _DictCache:
    """A third-party cache: a dict behind get/put."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, locator: Locator) -> bytes | None:
        return self.data.get(str(locator.bare()))

    def put(self, locator: Locator, data: bytes) -> None:
        self.data[str(locator.bare())] = data


def test_a_foreign_cache_is_wrapped_once_and_a_keepstore_cache_is_not() -> None:
    ours = MemoryBlockCache()
    assert as_block_cache(ours) is ours
    wrapped = as_block_cache(_DictCache())
    assert isinstance(wrapped, ForeignCache) and isinstance(wrapped, BlockCache)


def test_a_foreign_cache_hit_with_wrong_bytes_is_read_from_the_network() -> None:
    foreign = _DictCache()
    foreign.data[str(LOC)] = b"forge"  # same size, other bytes
    served: list[Request] = []

    def handler(request: Request) -> Response:
        served.append(request)
        return Response(200, body=DATA)

    with KeepClient(["http://127.0.0.1:1"], transport=MockTransport(handler), cache=foreign) as kc:
        assert kc.get(LOC) == DATA
        assert len(served) == 1 and kc.cache is foreign


def test_a_foreign_cache_hit_serves_without_a_request() -> None:
    foreign = _DictCache()
    foreign.data[str(LOC)] = DATA
    transport = MockTransport(lambda request: Response(500))
    with KeepClient(["http://127.0.0.1:1"], transport=transport, cache=foreign) as kc:
        assert kc.get(LOC) == DATA
        assert transport.requests == [] and kc.stats().cache_hits == 1


def test_close_cache_closes_the_cache_with_the_client() -> None:
    cache = MemoryBlockCache()
    cache.put(LOC, DATA)
    with KeepClient(["http://127.0.0.1:1"], transport=MockTransport(lambda r: Response(500)), cache=cache,
                    close_cache=True):
        pass
    assert len(cache) == 0  # a closed MemoryBlockCache holds nothing


def test_a_client_does_not_close_a_cache_it_was_only_lent() -> None:
    cache = MemoryBlockCache()
    cache.put(LOC, DATA)
    with KeepClient(["http://127.0.0.1:1"], transport=MockTransport(lambda r: Response(500)), cache=cache):
        pass
    assert len(cache) == 1


def test_batch_policies_are_an_enum_and_their_text_still_works() -> None:
    assert check_policy("never") is Raise.NEVER
    assert RAISE_FIRST is Raise.FIRST and RAISE_FIRST == "first"
    with pytest.raises(ValueError, match="'first', 'never'"):
        check_policy("sometimes")


class _Futures:
    """Not a KeepClient: anything with the *_async methods can feed a Batch."""

    def _done(self, value: object) -> Future[object]:
        future: Future[object] = Future()
        future.set_result(value)
        return future

    def put_async(self, data: bytes, *, copies: int | None = None, storage_classes: object = None) -> Future[object]:
        return self._done(Locator.for_data(data))

    def get_async(self, locator: object) -> Future[object]:
        return self._done(DATA)

    def head_async(self, locator: object) -> Future[object]:
        return self._done(True)


def test_a_batch_needs_only_the_async_operations_of_its_client() -> None:
    with Batch(_Futures()) as batch:  # type: ignore[arg-type]  # structurally an AsyncStore
        batch.put(DATA)
        batch.get(LOC)
        outcomes = batch.wait()
    assert [o.value for o in outcomes] == [LOC, DATA]


def test_the_old_writer_module_still_imports_with_a_deprecation_warning() -> None:
    sys.modules.pop("keepstore.writer", None)
    with pytest.warns(DeprecationWarning, match="keepstore.client.write"):
        writer = importlib.import_module("keepstore.writer")
    assert writer.parse_classes_confirmed("a=1, b=2") == {"a": 1, "b": 2}


def test_the_client_package_keeps_its_import_paths() -> None:
    from keepstore.client import ClientStats, new_request_id
    from keepstore.client import KeepClient as Direct

    assert Direct is KeepClient and ClientStats().requests == 0 and new_request_id().startswith("req-")


def test_a_cache_set_after_construction_is_used() -> None:
    foreign = _DictCache()
    foreign.data[str(LOC)] = DATA
    transport = MockTransport(lambda request: Response(500))
    with KeepClient(["http://127.0.0.1:1"], transport=transport, retries=0) as kc:
        kc.cache = foreign
        assert kc.get(LOC) == DATA and transport.requests == []


def test_request_ids_are_arvados_shaped_distinct_and_use_every_digit() -> None:
    import collections
    import re

    from keepstore.client import new_request_id

    ids = [new_request_id() for _ in range(3000)]
    assert all(re.fullmatch(r"req-[0-9a-z]{20}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    counts = collections.Counter("".join(i[4:] for i in ids))
    # 60,000 digits: 1,667 of each of the 36, give or take 40; bytes taken mod 36 without
    # dropping 252-255 would give four of them 1,905 each.
    assert len(counts) == 36 and min(counts.values()) > 1467 and max(counts.values()) < 1867
