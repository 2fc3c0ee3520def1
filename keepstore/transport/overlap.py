"""A large GET body received into its final `bytes` while a second thread hashes what has arrived."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from typing import Any

__all__ = ["OVERLAP_MIN", "HashedBody", "OverlapCounts", "overlap_supported"]

#: Bodies at least this large are received into a `HashedBody`. Smaller ones are hashed as they
#: come, on the receiving thread: a 4 KiB get must not pay for a thread, and at 4-8 MiB the
#: second thread measured no faster (at 16 MiB, 1.16x; at 64 MiB, 1.4x).
OVERLAP_MIN = 4 << 20
#: The hashing thread is told of new bytes once this many more have arrived (not per piece:
#: libcurl hands over 16 KiB at a time, 4,096 pieces per 64 MiB block).
_STEP = 1 << 20
#: Most bytes one ``md5.update`` takes (the GIL is released meanwhile), so `HashedBody.close`
#: is not held up long by a thread that is behind.
_PIECE = 8 << 20
_PyBUF_WRITE = 0x200  # Include/pybuffer.h


class _CApi:
    """The C-API calls that make a `bytes` object to fill before anyone else sees it (what C
    extensions do with ``PyBytes_FromStringAndSize(NULL, n)``), and a writable view of it.

    Not done: ``madvise(MADV_HUGEPAGE)`` on the buffer. It cut the client's page faults of a
    64 MiB body from 16,500 to 750, but on this VM a fresh huge page is often one the host
    took back, and its first touch then cost up to 200 ms of system time (1 run in 3).
    """

    def __init__(self) -> None:
        import ctypes  # imported on the first large body only: a 4 KiB get never pays for it

        api: Any = ctypes.pythonapi  # AttributeError outside CPython
        self.new = api.PyBytes_FromStringAndSize
        self.new.restype = ctypes.py_object
        self.new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        self.address = api.PyBytes_AsString
        self.address.restype = ctypes.c_void_p
        self.address.argtypes = (ctypes.py_object,)
        self.view = api.PyMemoryView_FromMemory  # a view of raw memory: no ctypes type per size
        self.view.restype = ctypes.py_object
        self.view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)

    def allocate(self, size: int) -> tuple[bytes, memoryview]:
        """A new `bytes` of *size* (contents undefined) and a writable view of its contents."""
        body = self.new(None, size)
        view = self.view(self.address(body), size, _PyBUF_WRITE)  # valid while *body* is held
        return body, view


@functools.cache
def _api() -> _CApi | None:
    """The process's C-API bindings, made on the first large body (None where they cannot be)."""
    try:
        return _CApi()
    except (ImportError, AttributeError):  # no ctypes, or not CPython
        return None


def overlap_supported() -> bool:
    """Whether `HashedBody` can be used here (CPython with ctypes)."""
    return _api() is not None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class OverlapCounts:
    """How often a transport received a large body as a `HashedBody` (thread-safe counts).

    ``bodies``: bodies received that way; ``threads``: hashing threads they started (one per
    body when the receive stays ahead of the md5, more when the hasher catches up and waits
    for nothing); ``inline``: of the bodies, those hashed on the receiving thread (one core).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bodies = 0
        self.threads = 0
        self.inline = 0

    def __repr__(self) -> str:
        return f"OverlapCounts(bodies={self.bodies}, threads={self.threads}, inline={self.inline})"

    def body(self, threaded: bool) -> None:
        with self._lock:
            self.bodies += 1
            self.inline += not threaded

    def thread(self) -> None:
        with self._lock:
            self.threads += 1


class HashedBody:
    """The body of one large block GET: a `bytes` of the block's size, filled in place as the
    pieces arrive, its md5 computed by a second thread that follows the received bytes.

    libcurl's ``perform`` and ``md5.update`` both release the GIL, so the md5 of what has come
    runs while the rest is received, and it is nearly done when the last byte lands; the
    result is the filled `bytes` itself, not a copy. The hashing thread starts with the first
    megabyte and ends whenever it has caught up (the next piece starts another), so it never
    waits for bytes that may not come: `close` (or `result`) joins it, and no thread outlives
    the body. With one usable core the md5 runs on the receiving thread instead.

    Args:
        size: The body's exact expected size (at least 1).
        counts: Where the body and its hashing threads are counted.
        threaded: Hash on a second thread (default: when this process may use two cores).
    """

    def __init__(self, size: int, counts: OverlapCounts | None = None, threaded: bool | None = None) -> None:
        api = _api()
        if api is None:
            raise RuntimeError("HashedBody needs CPython's ctypes (check overlap_supported() first)")
        self.size = size
        self.received = 0
        self._body, self._view = api.allocate(size)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._threaded = _cores() > 1 if threaded is None else threaded
        self._counts = counts
        if counts is not None:
            counts.body(self._threaded)
        self._lock = threading.Lock()
        self._announced = 0  # bytes the hashing thread may hash (under _lock)
        self._hashed = 0  # bytes hashed (written by whoever hashes; read after a join)
        self._thread: threading.Thread | None = None  # the one hashing now (under _lock)
        self._threads: list[threading.Thread] = []  # every one started, joined by `close`
        self._stopped = False
        self._closed = False

    def write(self, piece: bytes) -> bool:
        """Put *piece* after what has come; False (and nothing written) when it would not fit."""
        start = self.received
        end = start + len(piece)
        if end > self.size or self._closed:
            return False
        self._view[start:end] = piece
        self.received = end
        if not self._threaded:
            self._md5.update(piece)
            self._hashed = end
        elif end - self._announced >= _STEP or end == self.size:
            self._announce(end)
        return True

    def _announce(self, end: int) -> None:
        with self._lock:
            self._announced = end
            if self._thread is not None or self._stopped:
                return
            thread = self._thread = threading.Thread(target=self._hash, name="keepstore-md5", daemon=True)
            self._threads.append(thread)
        thread.start()
        if self._counts is not None:
            self._counts.thread()

    def _hash(self) -> None:
        """The hashing thread: hash what has been announced until caught up (or stopped)."""
        while True:
            with self._lock:
                start, end = self._hashed, min(self._announced, self._hashed + _PIECE)
                if start >= end or self._stopped:
                    self._thread = None
                    return
            self._md5.update(self._view[start:end])  # releases the GIL
            self._hashed = end

    def _join(self, stop: bool) -> None:
        with self._lock:
            self._stopped = self._stopped or stop
            threads = list(self._threads)
        for thread in threads:  # also one that has caught up and is only returning
            thread.join()

    def result(self) -> tuple[bytes, str]:
        """The body (the bytes received: all of it, or a copy of the start of a short one) and
        the hex md5 of it; waits for the hashing thread and hashes any rest itself."""
        if self._closed:
            raise RuntimeError("HashedBody is closed")
        self._join(stop=False)
        if self._hashed < self.received:
            self._md5.update(self._view[self._hashed:self.received])
            self._hashed = self.received
        digest = self._md5.hexdigest()
        body = self._body if self.received == self.size else bytes(self._view[:self.received])
        self.close()
        return body, digest

    def close(self) -> None:
        """Stop and join the hashing thread and drop the buffer; idempotent."""
        if self._closed:
            return
        self._join(stop=True)
        self._closed = True
        self._view.release()
        self._body = b""
