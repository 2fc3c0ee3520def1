"""Requests on one curl multi handle, in the caller's thread: hedged (at most two, first answer wins) or all at once."""

from __future__ import annotations

import collections
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pycurl

from .base import Finished, Request, TransportError
from .exchange import Exchange

__all__ = ["CurlPump", "CurlRace", "Slot"]

# The longest one wait for socket activity lasts, so a cancel set from another thread is seen
# within it (a race's requests have no progress callback: each step makes the check for them).
# A wait ends at once when a socket is ready, so this costs a healthy transfer nothing.
_LONGEST_WAIT = 0.1
# libcurl sometimes has no socket to wait on (a resolver without one): its documentation
# suggests waiting a little and asking again; this little.
_NO_SOCKET_WAIT = 0.002

Configure = Callable[[pycurl.Curl, Request, Exchange], None]
MapError = Callable[[pycurl.error, pycurl.Curl, Request, Exchange], TransportError]


class Slot:
    """A multi handle with its own connection cache, and the easy handles that ran on it.

    Races check one out of the transport's pool, so their kept-alive connections (held by the
    multi handle, to whichever services it has talked to) are reused by the next race.
    """

    def __init__(self) -> None:
        self.multi = pycurl.CurlMulti()
        self._free: list[pycurl.Curl] = []

    def easy(self) -> pycurl.Curl:
        """An easy handle to configure and add (a reused one, or a new one)."""
        return self._free.pop() if self._free else pycurl.Curl()

    def release(self, easy: pycurl.Curl) -> None:
        """Take back *easy*, removed from the multi handle (options and callbacks dropped)."""
        easy.reset()
        self._free.append(easy)

    def close(self) -> None:
        """Close the easy handles and the multi handle (and with it its connections)."""
        for easy in self._free:
            easy.close()
        self._free.clear()
        self.multi.close()


class _Running:
    """One request in flight: its index, easy handle, exchange and start time."""

    __slots__ = ("easy", "exchange", "index", "started")

    def __init__(self, index: int, easy: pycurl.Curl, exchange: Exchange, started: float) -> None:
        self.index = index
        self.easy = easy
        self.exchange = exchange
        self.started = started


class CurlRace(Iterator[Finished]):
    """`Transport.race` on *slot*: *configure* sets up an easy handle for a request, *map_error*
    turns a failed transfer into a `TransportError` (both `CurlTransport`'s own); once *closed*
    is set, requests not yet started fail as a closed transport's do. *done* gets the slot back
    when the race is closed (the transport's pool).

    The next request starts when nothing runs, or when the one running has had no first byte
    within *hedge_after* (never a third, never beside a streaming answer); one without a first
    byte is dropped once another answer has started streaming. An iterator with an explicit
    `close` rather than a generator: closing a generator raises inside it, which costs more than
    the rest of a healthy 4 KiB read's bookkeeping.

    With *together* (`Transport.fan_out`: the copies of one PUT) every request starts at once
    and each runs to its own end; nothing is dropped for another's answer.
    """

    def __init__(self, slot: Slot, requests: Sequence[Request], hedge_after: float,
                 on_start: Callable[[int], None] | None, configure: Configure, map_error: MapError,
                 closed: threading.Event, done: Callable[[Slot], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, *, together: bool = False) -> None:
        self._slot = slot
        self._multi = slot.multi
        # Not copied: a hedged read's requests are built when first asked for (mostly only one).
        self._requests: Sequence[Request] = requests
        self._hedge_after = hedge_after
        self._on_start = on_start
        self._configure = configure
        self._map_error = map_error
        self._closed = closed
        self._done = done
        self._clock = clock
        self._waiting = collections.deque(range(len(requests)))
        self._running: dict[int, _Running] = {}  # id(easy) -> the request it runs
        self._ready: collections.deque[Finished] = collections.deque()  # ended, not yet handed out
        self._finished = False
        self._together = together

    def __next__(self) -> Finished:
        while not self._ready:
            if self._finished or not (self._waiting or self._running):
                self.close()
                raise StopIteration
            self._step()
        return self._ready.popleft()

    def add(self, request: Request) -> int:
        """Another request for this race (fan-out: it starts at the next step); its index."""
        self._requests = [*self._requests, request]  # (not the caller's list, appended to)
        self._waiting.append(len(self._requests) - 1)
        return len(self._requests) - 1

    def close(self) -> None:
        """Drop what still runs (halted, connections closed) and give the slot back; idempotent."""
        if self._finished:
            return
        self._finished = True
        for run in self._running.values():
            self._drop(run)
        self._running.clear()
        if self._done is not None:
            self._done(self._slot)

    def _drop(self, run: _Running) -> None:
        # Removing a transfer that has not ended halts it; libcurl closes its connection.
        self._multi.remove_handle(run.easy)
        run.exchange.close()  # and a large body's hashing thread with it
        self._slot.release(run.easy)

    def _alone(self) -> _Running | None:
        return next(iter(self._running.values())) if len(self._running) == 1 else None

    def _step(self) -> None:
        """Start what is due, let libcurl move, collect what ended; wait when nothing did."""
        self._advance()
        if self._ready or not self._running:
            return
        # Wait for socket activity, libcurl's next timer, or the moment to hedge.
        multi = self._multi
        timeout_ms = multi.timeout()
        wait = _LONGEST_WAIT if timeout_ms < 0 else min(_LONGEST_WAIT, timeout_ms / 1000)
        if self._waiting:  # (never, together: all started above)
            alone = self._alone()
            if alone is not None and not alone.exchange.answered:
                wait = min(wait, alone.started + self._hedge_after - self._clock())
        if wait > 0 and multi.select(wait) == 0 and not any(multi.fdset()):
            # No socket to wait on (select returned at once): libcurl's advice is to wait a little.
            time.sleep(min(wait, _NO_SOCKET_WAIT))

    def _advance(self) -> None:
        """Start what is due, let libcurl move, and collect what ended (no waiting)."""
        running, waiting, multi = self._running, self._waiting, self._multi
        for run in running.values():
            if run.exchange.on_progress():  # the check libcurl makes for a request on an easy handle
                self._cancelled()
                break
        if self._together:
            while waiting:
                self._start(waiting.popleft())
        elif waiting:
            alone = self._alone()
            if not running or (alone is not None and not alone.exchange.answered
                               and self._clock() - alone.started >= self._hedge_after):
                self._start(waiting.popleft())
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        messages = multi.info_read()
        if messages[0] or messages[1] or messages[2]:
            self._ended(messages)
        if len(running) > 1 and not self._together and any(r.exchange.answered and 200 <= r.exchange.status <= 299
                                    for r in running.values()):
            # An answer has started streaming: one that has not, beside it, only doubles the bytes.
            for key, run in list(running.items()):
                if not run.exchange.answered:
                    del running[key]
                    self._drop(run)
                    request = run.exchange.request
                    self._ready.append(Finished(run.index, error=TransportError(
                        f"{request.method} abandoned: another service answered first",
                        url=request.url.split("?", 1)[0], cancelled=True)))

    def _cancelled(self) -> None:
        """Drop the running requests whose cancel event is set: each ends as a cancelled request."""
        for key, run in list(self._running.items()):
            if run.exchange.on_progress():
                del self._running[key]
                self._drop(run)
                request = run.exchange.request
                self._ready.append(Finished(run.index, error=TransportError(
                    f"{request.method} cancelled", url=request.url.split("?", 1)[0], cancelled=True)))

    def _request(self, index: int) -> Request:
        return self._requests[index]

    def _start(self, index: int) -> None:
        request = self._request(index)
        if self._closed.is_set() or request.cancelled:
            closed = self._closed.is_set()
            reason = "transport is closed" if closed else f"{request.method} cancelled"
            self._ready.append(Finished(index, error=TransportError(reason, url=request.url.split("?", 1)[0],
                                                                    cancelled=not closed)))
            return
        easy = self._slot.easy()
        exchange = Exchange(request)
        self._configure(easy, request, exchange)
        if self._on_start is not None:
            self._on_start(index)
        self._multi.add_handle(easy)
        self._running[id(easy)] = _Running(index, easy, exchange, self._clock())

    def _ended(self, messages: tuple[int, list[pycurl.Curl], list[tuple[pycurl.Curl, int, str]]]) -> None:
        """Take the transfers libcurl has finished (*messages*: its first ``info_read``) off the multi handle."""
        while True:
            queued, ok, failed = messages
            for easy in ok:
                run = self._running.pop(id(easy))
                self._ready.append(Finished(run.index, response=run.exchange.response()))
                self._drop(run)
            for easy, code, message in failed:
                run = self._running.pop(id(easy))
                exchange = run.exchange
                if exchange.truncated:  # we stopped reading an overlong body: an answer all the same
                    self._ready.append(Finished(run.index, response=exchange.response()))
                else:
                    error = self._map_error(pycurl.error(code, message), easy, exchange.request, exchange)
                    self._ready.append(Finished(run.index, error=error))
                self._drop(run)
            if not queued:
                return
            messages = self._multi.info_read()


class CurlPump(CurlRace):
    """`Transport.pump` on a *slot* of its own: a fan-out (every request starts at the next
    step, each runs to its own end) that lives as long as its one thread wants, and whose waits
    `wake` ends from any thread (a socket pair beside libcurl's sockets in one ``poll``).

    Requests are held until they start, then only by their transfer: a pump's life is long.
    libcurl's ``fdset`` leaves out sockets numbered past ``FD_SETSIZE`` (1,024), as for
    `CurlRace`'s ``select``: a transfer on one still moves at every step, which comes every 2 ms
    when no socket is seen at all and at least every 0.1 s beside ones that are (checked with
    1,100 files open: a 4 KiB get 0.38 ms, against 0.31 ms with few).
    """

    def __init__(self, slot: Slot, on_start: Callable[[int], None] | None, configure: Configure,
                 map_error: MapError, closed: threading.Event) -> None:
        self._pending: dict[int, Request] = {}  # added, not yet started
        super().__init__(slot, (), 0.0, on_start, configure, map_error, closed, together=True)
        self._next = 0
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)

    def add(self, request: Request) -> int:
        index = self._next
        self._next += 1
        self._pending[index] = request
        self._waiting.append(index)
        return index

    @property
    def running(self) -> int:
        return len(self._pending) + len(self._running) + len(self._ready)

    def wake(self) -> None:
        try:
            self._wake_out.send(b"w")
        except (BlockingIOError, OSError):  # full: a wake is already waiting; closed: nothing to wake
            pass

    def step(self, wait: float | None) -> list[Finished]:
        if self._finished:
            return []
        self._advance()
        if not self._ready:
            self._poll(wait)
            self._advance()
        ready = list(self._ready)
        self._ready.clear()
        return ready

    def _request(self, index: int) -> Request:
        return self._pending.pop(index)

    def _poll(self, wait: float | None) -> None:
        """Wait up to *wait* (None: for ever) for a socket, libcurl's next timer, or a wake."""
        multi = self._multi
        if self._running:
            timeout_ms = multi.timeout()
            limit = _LONGEST_WAIT if timeout_ms < 0 else min(_LONGEST_WAIT, timeout_ms / 1000)
            wait = limit if wait is None else min(wait, limit)
        if wait is not None and wait <= 0:
            return
        poller = select.poll()
        poller.register(self._wake_in, select.POLLIN)
        reads, writes, errors = multi.fdset()
        masks: dict[int, int] = {}
        for fds, mask in ((reads, select.POLLIN), (writes, select.POLLOUT), (errors, select.POLLPRI)):
            for fd in fds:
                masks[fd] = masks.get(fd, 0) | mask
        for fd, mask in masks.items():
            poller.register(fd, mask)
        if not masks and self._running and wait is not None:
            wait = min(wait, _NO_SOCKET_WAIT)  # no socket yet: libcurl's advice (see `CurlRace`)
        events = poller.poll(None if wait is None else max(1, int(wait * 1000 + 0.999)))
        if any(fd == self._wake_in.fileno() for fd, _ in events):
            try:
                while self._wake_in.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def close(self) -> None:
        if self._finished:
            return
        super().close()
        self._pending.clear()
        self._slot.close()
        self._wake_in.close()
        self._wake_out.close()
