"""Hashing a PUT body once for every volume, on a second thread while the next chunk arrives."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = ["BodyHasher", "PooledBody"]

HASHER_THREAD = "keep-put-md5"  # the hashing thread's name (tests count the threads so named)


@runtime_checkable
class PooledBody(Protocol):
    """A body that reads each chunk into a buffer it is given (a `connection.Body`)."""

    length: int
    chunk: int

    def __iter__(self) -> Iterator[memoryview]: ...

    def into(self, buffers: Callable[[], memoryview]) -> Iterator[memoryview]: ...


class BodyHasher:
    """The md5 of one request body, computed once however many volumes take a copy.

    `chunks` gives the body's chunks, each handed to the hasher as it is given out. A body
    of more than one chunk that can read into given buffers (`PooledBody`) is hashed on a
    second thread: its chunks are read into a small pool of *buffers*, and a buffer goes back
    to the pool only once hashed, so it is never refilled while the thread reads it, and
    receiving and writing the next chunks overlap the hashing (hashlib lets go of the GIL for
    big updates). Anything else is hashed inline. Use it as a context manager: leaving stops
    and joins the thread, so it never outlives the request, whatever ended the body.

    Args:
        buffers: How many chunk buffers the pool holds at most (the thread may lag this many
            behind); they are made as needed.
    """

    def __init__(self, buffers: int = 4) -> None:
        if buffers < 2:
            raise ValueError(f"a hashing pool needs at least 2 buffers, got {buffers}")
        self.buffers = buffers
        self.updates = 0  # md5 updates made: one per chunk, whatever the number of volumes
        self.hashed = 0  # chunks the thread has hashed and given back to the pool
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._work: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._pool: dict[int, memoryview] = {}  # the pool's buffers, by id() of the memory under each
        self._size = 0  # bytes per buffer
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None

    @property
    def made(self) -> int:
        """How many buffers the pool has made so far (at most *buffers*)."""
        return len(self._pool)

    @property
    def threaded(self) -> bool:
        """Whether a hashing thread was started (for a body of more than one chunk)."""
        return self._thread is not None

    def chunks(self, body: Iterable[bytes | memoryview]) -> Iterator[bytes | memoryview]:
        """*body*'s chunks, each already handed to the hasher; a chunk is valid until the next
        is asked for (the caller writes it meanwhile, alongside the hashing)."""
        if getattr(body, "length", 0) > getattr(body, "chunk", 1 << 62) and isinstance(body, PooledBody):
            # (the sizes first: a runtime protocol check costs microseconds, a 4 KiB PUT notices)
            self._start(body.chunk)
            for chunk in body.into(self._buffer):
                self.updates += 1
                self._work.put(chunk)
                yield chunk
        else:
            for piece in body:
                self.updates += 1
                self._md5.update(piece)
                yield piece

    def hexdigest(self) -> str:
        """The md5 of every chunk given out, once the thread (if any) has hashed them all."""
        self._finish()
        if self._failure is not None:
            raise RuntimeError("the body's hashing thread failed") from self._failure
        return self._md5.hexdigest()

    def close(self) -> None:
        """Stop the thread without hashing what it has not reached, and wait for it."""
        self._stopping = True
        self._finish()

    def _start(self, size: int) -> None:
        self._size = size
        self._thread = threading.Thread(target=self._hash, name=HASHER_THREAD, daemon=True)
        self._thread.start()

    def _buffer(self) -> memoryview:
        """A free buffer of the pool: a new one while the pool is not full (so a body that the
        thread keeps up with, a slow client's, pins one or two), else the next the thread frees."""
        try:
            buffer = self._free.get_nowait()
        except queue.Empty:  # the thread still holds every buffer made so far
            if len(self._pool) < self.buffers:
                buffer = memoryview(bytearray(self._size))
                self._pool[id(buffer.obj)] = buffer
                return buffer
            buffer = self._free.get()
        if buffer is None:  # the thread died: nothing will come back
            raise RuntimeError("the body's hashing thread failed") from self._failure
        return buffer

    def _hash(self) -> None:
        try:
            while (chunk := self._work.get()) is not None:
                if not self._stopping:
                    self._md5.update(chunk)
                self._free.put(self._owner(chunk))
                self.hashed += 1  # only this thread counts: no lock needed
        except BaseException as exc:  # reported by hexdigest(), and _buffer() must not wait forever
            self._failure = exc
            self._free.put(None)

    def _owner(self, chunk: memoryview) -> memoryview:
        """The pool buffer *chunk* is a slice of (the body reads only into those)."""
        return self._pool[id(chunk.obj)]

    def _finish(self) -> None:
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "BodyHasher":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
