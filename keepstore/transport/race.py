"""Hedged requests on one curl multi handle, in the caller's thread: at most two in flight, first answer wins."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Generator, Sequence

import pycurl

from .base import Finished, Request, TransportError
from .exchange import Exchange

__all__ = ["Slot", "run_race"]

# The longest one wait for socket activity lasts, so a cancel set from another thread is seen
# by libcurl's progress callback within it (as a plain request sees it).
_LONGEST_WAIT = 1.0
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


def run_race(slot: Slot, requests: Sequence[Request], hedge_after: float, on_start: Callable[[int], None] | None,
             configure: Configure, map_error: MapError, closed: threading.Event,
             clock: Callable[[], float] = time.monotonic,
             done: Callable[[Slot], None] | None = None) -> Generator[Finished, None, None]:
    """`Transport.race` on *slot*: *configure* sets up an easy handle for a request, *map_error*
    turns a failed transfer into a `TransportError` (both `CurlTransport`'s own); once *closed*
    is set, requests not yet started fail as a closed transport's do. *done* gets the slot back
    at the end (the transport's pool).

    The next request starts when nothing runs, or when the one running has had no first byte
    within *hedge_after* (never a third, never beside a streaming answer); one without a first
    byte is abandoned once another answer has started streaming.
    """
    multi = slot.multi
    waiting = collections.deque(range(len(requests)))
    running: dict[int, _Running] = {}  # id(easy) -> the request it runs
    alone: _Running | None = None  # the one request running, when only one is

    def drop(run: _Running) -> None:
        # Removing a transfer that has not ended halts it; libcurl closes its connection.
        multi.remove_handle(run.easy)
        slot.release(run.easy)

    try:
        while waiting or running:
            if waiting and (not running or (alone is not None and not alone.exchange.answered
                                            and clock() - alone.started >= hedge_after)):
                index = waiting.popleft()
                request = requests[index]
                if closed.is_set() or request.cancelled:
                    reason = "transport is closed" if closed.is_set() else f"{request.method} cancelled"
                    yield Finished(index, error=TransportError(reason, url=request.url.split("?", 1)[0],
                                                               cancelled=not closed.is_set()))
                    continue
                easy = slot.easy()
                exchange = Exchange(request)
                configure(easy, request, exchange)
                if on_start is not None:
                    on_start(index)
                multi.add_handle(easy)
                running[id(easy)] = _Running(index, easy, exchange, clock())
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            messages = multi.info_read()
            if messages[0] or messages[1] or messages[2]:
                yield from _ended(multi, running, map_error, drop, messages)
            if len(running) > 1 and any(r.exchange.answered and 200 <= r.exchange.status <= 299
                                        for r in running.values()):
                # An answer has started streaming: one that has not, beside it, only doubles the bytes.
                for key, run in list(running.items()):
                    if not run.exchange.answered:
                        del running[key]
                        drop(run)
                        request = run.exchange.request
                        yield Finished(run.index, error=TransportError(
                            f"{request.method} abandoned: another service answered first",
                            url=request.url.split("?", 1)[0], cancelled=True))
            alone = next(iter(running.values())) if len(running) == 1 else None
            if running:
                _wait(multi, alone if waiting else None, hedge_after, clock)
    finally:
        for run in running.values():
            drop(run)
        running.clear()
        if done is not None:
            done(slot)


def _ended(multi: pycurl.CurlMulti, running: dict[int, _Running], map_error: MapError,
           drop: Callable[[_Running], None],
           messages: tuple[int, list[pycurl.Curl], list[tuple[pycurl.Curl, int, str]]]) -> list[Finished]:
    """The transfers libcurl has finished (*messages*: its first ``info_read``), taken off the multi handle."""
    ended: list[Finished] = []
    while True:
        queued, ok, failed = messages
        for easy in ok:
            run = running.pop(id(easy))
            ended.append(Finished(run.index, response=run.exchange.response()))
            drop(run)
        for easy, code, message in failed:
            run = running.pop(id(easy))
            exchange = run.exchange
            if exchange.truncated:  # we stopped reading an overlong body: an answer all the same
                ended.append(Finished(run.index, response=exchange.response()))
            else:
                exc = pycurl.error(code, message)
                ended.append(Finished(run.index, error=map_error(exc, easy, exchange.request, exchange)))
            drop(run)
        if not queued:
            return ended
        messages = multi.info_read()


def _wait(multi: pycurl.CurlMulti, hedged: _Running | None, hedge_after: float, clock: Callable[[], float]) -> None:
    """Wait for socket activity, libcurl's next timer, or the moment *hedged* (the one request
    running, when another waits) is due a hedge, whichever is first."""
    timeout_ms = multi.timeout()
    wait = _LONGEST_WAIT if timeout_ms < 0 else min(_LONGEST_WAIT, timeout_ms / 1000)
    if hedged is not None and not hedged.exchange.answered:
        wait = min(wait, hedged.started + hedge_after - clock())
    if wait <= 0:
        return
    if multi.select(wait) == 0 and not any(multi.fdset()):
        # No socket to wait on (select returned at once): libcurl's advice is to wait a little.
        time.sleep(min(wait, _NO_SOCKET_WAIT))
