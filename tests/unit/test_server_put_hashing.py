"""A PUT body is hashed once, on a second thread over a pool of buffers, for every volume it goes to."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hashing_threads import Threads

from keepstore.errors import WriteError
from keepstore.server.blocks import Blocks, Stored
from keepstore.server.disk import VolumeWriter
from keepstore.server.exchange import Refusal
from keepstore.server.hashing import BodyHasher, PooledBody
from keepstore.server.volumes import Volume
from keepstore.testing import wait_until

KiB = 1024


class PoolBody:
    """A request body that reads each chunk into the buffer it is given, as `connection.Body`
    does from a socket; it can fail after *fail_after* bytes, as a client that hangs up."""

    def __init__(self, data: bytes, chunk: int, fail_after: int | None = None) -> None:
        self.data, self.length, self.chunk = data, len(data), chunk
        self.fail_after = fail_after
        self.buffers_seen: set[int] = set()

    def __iter__(self) -> Iterator[memoryview]:
        buffer = memoryview(bytearray(min(self.chunk, self.length)))
        return self.into(lambda: buffer)

    def into(self, buffers: Callable[[], memoryview]) -> Iterator[memoryview]:
        offset = 0
        while offset < self.length:
            if self.fail_after is not None and offset >= self.fail_after:
                raise ConnectionError(f"client sent {offset} of {self.length} bytes")
            buffer = buffers()
            self.buffers_seen.add(id(buffer.obj))
            count = min(len(buffer), self.length - offset)
            buffer[:count] = self.data[offset:offset + count]
            offset += count
            yield buffer[:count]

def test_a_body_of_many_chunks_is_hashed_on_a_thread_through_a_small_pool_of_buffers(hasher_threads: Threads) -> None:
    data = os.urandom(200 * 16 * KiB + 123)  # 201 chunks of distinct bytes: a buffer refilled too early shows
    body = PoolBody(data, 16 * KiB)
    assert isinstance(body, PooledBody)
    with BodyHasher(buffers=3) as hasher:
        assert b"".join(bytes(c) for c in hasher.chunks(body)) == data
        assert hasher.threaded
        assert hasher.hexdigest() == hashlib.md5(data).hexdigest()
    assert hasher.updates == 201
    assert 1 <= len(body.buffers_seen) <= 3  # every chunk went through the pool's (at most) three buffers
    assert not hasher_threads()


class SlowBody(PoolBody):
    """A body whose client is slower than the hashing: each chunk arrives only once the thread
    has hashed the one before (the test waits on the hasher's count, not on the clock)."""

    def __init__(self, data: bytes, chunk: int, hasher: BodyHasher) -> None:
        super().__init__(data, chunk)
        self.hasher = hasher

    def into(self, buffers: Callable[[], memoryview]) -> Iterator[memoryview]:
        def caught_up() -> memoryview:
            wait_until(lambda: self.hasher.hashed == self.hasher.updates, what="the hasher catching up")
            return buffers()
        return super().into(caught_up)


def test_a_client_slower_than_the_hashing_pins_one_buffer_a_fast_one_at_most_the_pool() -> None:
    data = os.urandom(30 * 16 * KiB)
    with BodyHasher(buffers=4) as slow:
        list(slow.chunks(SlowBody(data, 16 * KiB, slow)))
        assert slow.hexdigest() == hashlib.md5(data).hexdigest()
    assert slow.made == 1
    with BodyHasher(buffers=4) as fast:
        list(fast.chunks(PoolBody(data, 16 * KiB)))
        assert fast.hexdigest() == hashlib.md5(data).hexdigest()
    assert 1 <= fast.made <= 4


def test_a_body_of_one_chunk_and_a_plain_iterable_are_hashed_inline() -> None:
    data = os.urandom(10 * KiB)
    with BodyHasher() as one:
        list(one.chunks(PoolBody(data, 16 * KiB)))
        assert not one.threaded
        assert one.hexdigest() == hashlib.md5(data).hexdigest()
    with BodyHasher() as plain:
        list(plain.chunks([data[:5], data[5:]]))
        assert not plain.threaded
        assert plain.hexdigest() == hashlib.md5(data).hexdigest()


def test_a_body_that_fails_midway_leaves_no_hashing_thread(hasher_threads: Threads) -> None:
    body = PoolBody(os.urandom(64 * 16 * KiB), 16 * KiB, fail_after=20 * 16 * KiB)
    with pytest.raises(ConnectionError, match="client sent 327680 of"), BodyHasher() as hasher:
        for _ in hasher.chunks(body):
            assert hasher.threaded
    assert not hasher_threads()


def test_leaving_before_the_end_of_the_body_stops_and_joins_the_thread(hasher_threads: Threads) -> None:
    with BodyHasher() as hasher:
        chunks = hasher.chunks(PoolBody(os.urandom(64 * 16 * KiB), 16 * KiB))
        next(chunks)
        assert hasher_threads()
    assert not hasher_threads()


def test_a_pool_needs_two_buffers() -> None:
    with pytest.raises(ValueError, match="at least 2 buffers, got 1"):
        BodyHasher(buffers=1)


def test_a_writer_told_the_caller_hashes_checks_the_digest_it_is_given(tmp_path: Path) -> None:
    data = os.urandom(3 * KiB)
    md5 = hashlib.md5(data).hexdigest()
    with VolumeWriter(tmp_path, md5, fsync=False) as writer:
        writer.write(data, hashed=True)
        with pytest.raises(WriteError, match="does not match block name"):
            writer.commit()  # it did not hash what it wrote: its own digest is of nothing
        with pytest.raises(WriteError, match=f"data md5 {'0' * 32} does not match"):
            writer.commit("0" * 32)
        assert writer.commit(md5).md5 == md5
    assert (tmp_path / md5[:3] / md5).read_bytes() == data


class CountingHashers:
    """Makes real `BodyHasher`s for a `Blocks`, keeping each to count what it hashed."""

    def __init__(self) -> None:
        self.made: list[BodyHasher] = []

    def __call__(self) -> BodyHasher:
        self.made.append(BodyHasher())
        return self.made[-1]


def test_two_volumes_get_the_body_and_it_is_hashed_once(tmp_path: Path, hasher_threads: Threads) -> None:
    hashers = CountingHashers()
    volumes = [Volume(tmp_path / "hot", ("hot",), fsync=False), Volume(tmp_path / "plain", fsync=False)]
    blocks = Blocks(volumes, hasher=hashers)
    data = os.urandom(40 * 16 * KiB)
    md5 = hashlib.md5(data).hexdigest()
    result = blocks.store(md5, len(data), PoolBody(data, 16 * KiB), ["hot", "default"])
    assert isinstance(result, Stored) and len(result.volumes) == 2
    for volume in volumes:
        assert (volume.path / md5[:3] / md5).read_bytes() == data
    assert len(hashers.made) == 1 and hashers.made[0].updates == 40  # once per chunk, not per volume
    assert not hasher_threads()


def test_a_wrong_md5_commits_no_copy_on_any_volume(tmp_path: Path, hasher_threads: Threads) -> None:
    volumes = [Volume(tmp_path / "hot", ("hot",), fsync=False), Volume(tmp_path / "plain", fsync=False)]
    data = os.urandom(40 * 16 * KiB)
    wrong = hashlib.md5(b"something else").hexdigest()
    result = Blocks(volumes).store(wrong, len(data), PoolBody(data, 16 * KiB), ["hot", "default"])
    assert isinstance(result, Refusal) and result.status == 400
    assert [p for v in volumes for p in v.path.rglob("*") if p.is_file()] == []
    assert not hasher_threads()


def test_a_body_cut_off_leaves_nothing_on_either_volume_and_no_thread(tmp_path: Path, hasher_threads: Threads) -> None:
    volumes = [Volume(tmp_path / "hot", ("hot",), fsync=False), Volume(tmp_path / "plain", fsync=False)]
    data = os.urandom(40 * 16 * KiB)
    md5 = hashlib.md5(data).hexdigest()
    body = PoolBody(data, 16 * KiB, fail_after=len(data) // 2)
    with pytest.raises(ConnectionError):
        Blocks(volumes).store(md5, len(data), body, ["hot", "default"])
    assert [p for v in volumes for p in v.path.rglob("*") if p.is_file()] == []
    assert not hasher_threads()
