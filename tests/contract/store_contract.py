"""The `BlockStore` contract: behaviour every store (LocalStore, KeepClient, ...) must show.

Subclass `StoreContract` in a ``test_*.py`` module and override the ``store`` fixture::

    class TestLocalStoreContract(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            yield LocalStore(tmp_path)

Only the public `BlockStore` interface is used here, never an implementation's internals.
"""

from __future__ import annotations

import array
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from keepstore.errors import BlockNotFound, KeepError, LocatorError, ReadError
from keepstore.locator import EMPTY_BLOCK, MAX_BLOCK_SIZE, Locator
from keepstore.store import BlockStore

__all__ = ["StoreContract"]

MISSING = Locator(hashlib.md5(b"never stored by the contract suite").hexdigest(), 33)

BAD_LOCATORS = [
    "",
    "foo",
    "acbd18db4cc2f85cedef654fccc4a4d8",  # no size
    "ACBD18DB4CC2F85CEDEF654FCCC4A4D8+3",  # uppercase hex
    "acbd18db4cc2f85cedef654fccc4a4d8+-3",  # negative size
    "acbd18db4cc2f85cedef654fccc4a4d8+3+",  # trailing '+'
    "acbd18db4cc2f85cedef654fccc4a4d8+3+k",  # lowercase hint letter
    "acbd18db4cc2f85cedef654fccc4a4d8+3+K*",  # '*' in a hint
    "../../../../etc/passwd+3",
    "acbd18db4cc2f85cedef654fccc4a4d8/../x+3",
]


def _block(tag: str, size: int) -> bytes:
    """*size* deterministic bytes, different for every *tag* (cheap even at 64 MiB)."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _key(loc: Locator) -> tuple[str, int]:
    return loc.md5, loc.size


class StoreContract:
    """Behaviour a `BlockStore` must show; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Iterator[BlockStore]:
        raise NotImplementedError("subclasses of StoreContract must override the store fixture")
        yield  # pragma: no cover

    # -- round trips -------------------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 3, (1 << 20) + 1], ids=["0B", "1B", "3B", "1MiB+1"])
    def test_put_then_get_returns_the_same_bytes(self, store: BlockStore, size: int) -> None:
        data = os.urandom(size)
        loc = store.put(data)
        assert isinstance(loc, Locator)
        assert store.get(loc) == data
        assert store.get(str(loc)) == data

    def test_put_then_get_of_exactly_64_mib(self, store: BlockStore) -> None:
        data = _block("64MiB", MAX_BLOCK_SIZE)
        loc = store.put(data)
        assert _key(loc) == (hashlib.md5(data).hexdigest(), MAX_BLOCK_SIZE)
        got = store.get(loc)
        assert len(got) == MAX_BLOCK_SIZE and got == data

    def test_get_returns_bytes(self, store: BlockStore) -> None:
        loc = store.put(b"some bytes")
        assert type(store.get(loc)) is bytes

    def test_put_returns_locator_with_md5_and_size_of_the_data(self, store: BlockStore) -> None:
        data = b"foo"
        loc = store.put(data)
        assert loc.md5 == "acbd18db4cc2f85cedef654fccc4a4d8"
        assert loc.size == 3
        assert Locator.parse(str(loc)) == loc

    def test_put_of_bytes_bytearray_memoryview_and_str_gives_the_same_locator(self, store: BlockStore) -> None:
        text = "h\u00e9llo, blocks"
        raw = text.encode("utf-8")
        locators = [store.put(value) for value in (raw, bytearray(raw), memoryview(raw), text)]
        assert {_key(loc) for loc in locators} == {(hashlib.md5(raw).hexdigest(), len(raw))}
        assert store.get(locators[-1]) == raw

    def test_put_of_a_wide_memoryview_stores_its_raw_bytes(self, store: BlockStore) -> None:
        numbers = array.array("I", range(1000))
        loc = store.put(memoryview(numbers))
        assert _key(loc) == (hashlib.md5(numbers.tobytes()).hexdigest(), len(numbers.tobytes()))
        assert store.get(loc) == numbers.tobytes()

    def test_put_of_the_same_data_twice_gives_the_same_block(self, store: BlockStore) -> None:
        first = store.put(b"twice")
        second = store.put(b"twice")
        assert _key(first) == _key(second)
        assert store.get(second) == b"twice"

    def test_head_and_exists_see_a_stored_block(self, store: BlockStore) -> None:
        loc = store.put(b"present")
        assert store.head(loc) is True
        assert store.exists(loc) is True
        assert store.exists(str(loc)) is True

    # -- the empty block ---------------------------------------------------------------------

    def test_empty_block_is_always_available(self, store: BlockStore) -> None:
        assert store.get(EMPTY_BLOCK) == b""
        assert store.head(EMPTY_BLOCK) is True
        assert store.exists(Locator.parse(EMPTY_BLOCK)) is True

    def test_put_of_empty_data_returns_the_empty_block_locator(self, store: BlockStore) -> None:
        loc = store.put(b"")
        assert _key(loc) == _key(Locator.parse(EMPTY_BLOCK))
        assert store.get(loc) == b""

    # -- missing blocks ----------------------------------------------------------------------

    def test_get_of_a_missing_block_raises_block_not_found(self, store: BlockStore) -> None:
        with pytest.raises(BlockNotFound) as info:
            store.get(MISSING)
        assert isinstance(info.value, ReadError) and isinstance(info.value, KeepError)
        assert MISSING.md5 in str(info.value)

    def test_head_of_a_missing_block_raises_block_not_found(self, store: BlockStore) -> None:
        with pytest.raises(BlockNotFound):
            store.head(MISSING)

    def test_exists_of_a_missing_block_is_false(self, store: BlockStore) -> None:
        assert store.exists(MISSING) is False
        assert store.exists(str(MISSING)) is False

    # -- bad input ---------------------------------------------------------------------------

    @pytest.mark.parametrize("text", BAD_LOCATORS)
    def test_bad_locator_text_raises_locator_error(self, store: BlockStore, text: str) -> None:
        for method in (store.get, store.head, store.exists):
            with pytest.raises(LocatorError):
                method(text)

    def test_non_text_locator_raises_locator_error(self, store: BlockStore) -> None:
        with pytest.raises(LocatorError):
            store.get(12345)  # type: ignore[arg-type]

    def test_put_over_64_mib_raises_and_stores_nothing(self, store: BlockStore) -> None:
        data = _block("too big", MAX_BLOCK_SIZE + 1)
        with pytest.raises(KeepError) as info:
            store.put(data)
        assert "64 MiB" in str(info.value)
        prefix = memoryview(data)[:MAX_BLOCK_SIZE]
        assert store.exists(Locator(hashlib.md5(prefix).hexdigest(), MAX_BLOCK_SIZE)) is False

    def test_put_of_a_non_buffer_raises_type_error(self, store: BlockStore) -> None:
        with pytest.raises(TypeError):
            store.put(12345)  # type: ignore[arg-type]

    # -- concurrency -------------------------------------------------------------------------

    def test_eight_threads_putting_and_getting_same_and_different_blocks(self, store: BlockStore) -> None:
        shared = _block("shared", 300_000)
        shared_key = (hashlib.md5(shared).hexdigest(), len(shared))

        def work(n: int) -> tuple[bytes, Locator]:
            own = _block(f"own-{n}", 100_000 + n)
            for _ in range(5):
                loc_shared = store.put(shared)
                loc_own = store.put(own)
                assert _key(loc_shared) == shared_key
                assert store.get(loc_shared) == shared
                assert store.get(loc_own) == own
                assert store.exists(loc_own)
            return own, loc_own

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [future.result() for future in [pool.submit(work, n) for n in range(8)]]
        assert len({_key(loc) for _, loc in results}) == 8
        for own, loc in results:
            assert store.get(loc) == own
