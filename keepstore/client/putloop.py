"""The put loop: small blocks' puts from `put_async`, many at once, on one thread and one pump."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..errors import Cancelled, KeepError
from ..services import Service
from ..store import PutResult
from ..transport import Request, Response, TransportError
from .rounds import GiveUp, RoundResult, round_timeout, run_rounds
from .wire import CountedPump, Wire
from .write import BlockWrite, FanRound

__all__ = ["PutLoop", "QueuedPut"]

log = logging.getLogger(__name__)

#: Runs a continuation on the client's task pool: ``carry_on(fn) -> Future``, RuntimeError once
#: that pool is shut down.
CarryOn = Callable[[Callable[[], None]], "Future[Any]"]


class QueuedPut:
    """One put on the loop: its first round runs there, beside the other puts' PUTs (a
    `FanRound`); a put that round did not finish goes on, round by round with the usual
    backoff, on the client's task pool (*carry_on*), under the same deadline.

    *stored* is told of each put that succeeded, with its bytes (the client's write-through
    cache). `future` completes with the `PutResult` (its locator alone with *locator_only*, as
    `put` returns), or the error `put_block` would have raised.
    """

    def __init__(self, write: BlockWrite, carry_on: CarryOn, stored: Callable[[PutResult, memoryview], None], *,
                 locator_only: bool = False) -> None:
        self.write = write
        self.future: Future[Any] = Future()
        self._locator_only = locator_only
        self._carry_on = carry_on
        self._stored = stored
        self._fan: FanRound | None = None
        self._writable: list[Service] = []
        self._started = 0.0
        self._error: BaseException | None = None

    @property
    def running(self) -> int:
        """Its PUTs in flight on the loop."""
        return 0 if self._fan is None else self._fan.running

    def begin(self) -> list[tuple[Service, Request]]:
        """The first round's PUTs (none: the put is already over, `end` says how)."""
        rounds = self.write.link.rounds
        self._started = rounds.clock()
        deadline = None if rounds.retry.deadline is None else self._started + rounds.retry.deadline
        try:
            self._writable, queue, parallel = self.write.candidates()
            self._fan = FanRound(self.write, queue, round_timeout(rounds, 0, deadline), parallel=parallel)
            return self._fan.opening()
        except BaseException as exc:  # (anything it raises is the put's to raise)
            self._error = exc
            return []

    def ended(self, service: Service, result: Response | TransportError) -> list[tuple[Service, Request]]:
        """Record one PUT's end; the PUTs to start in its place."""
        assert self._fan is not None
        if self._error is not None:
            self._fan.running -= 1
            return []
        try:
            return self._fan.ended(service, result)
        except BaseException as exc:
            self._error = exc
            return []

    def end(self) -> None:
        """The first round is over (nothing of it in flight): finish, or go on elsewhere."""
        if self._error is not None:
            self.fail(self._error)
            return
        assert self._fan is not None
        retry_after = self._fan.retry_after if self._fan.retry_after >= 0 else None
        first = self.write.round_result(self._writable, retry_after)
        if first.done:
            self._finish(first)
            return
        try:
            inner = self._carry_on(lambda: self._finish(first))
        except RuntimeError:  # the task pool is shut down: the client closed
            self.fail(self.write.give_up(GiveUp.CLOSED, 1))
            return
        inner.add_done_callback(self._dropped)

    def _finish(self, first: RoundResult[PutResult]) -> None:
        """Go on from *first*, the first round's result, to the put's end (on the task pool
        unless the round was done)."""
        try:
            result = run_rounds(self.write, self.write.link.rounds, first=first, started=self._started)
            self._stored(result, self.write.view)
        except BaseException as exc:
            self.fail(exc)
        else:
            if not self.future.done():
                self.future.set_result(result.locator if self._locator_only else result)

    def _dropped(self, inner: Future[Any]) -> None:
        if inner.cancelled():  # dropped by the pool's shutdown (close after cancel)
            self.fail(Cancelled(f"PUT {self.write.subject} cancelled"))

    def fail(self, exc: BaseException) -> None:
        """End the put with *exc* (unless it has ended already)."""
        if not self.future.done():
            self.future.set_exception(exc)


class PutLoop:
    """One thread that runs the first round of many small puts at once on one pump (one curl
    multi handle): no thread per put, no threads taking turns with the interpreter lock for
    every libcurl callback. At most *limit* puts run at once; the rest wait in order.

    `submit` is safe from any thread; `close` lets every queued and running put finish (a
    client's cancel aborts their transfers) and stops the thread. The futures complete on the
    loop's thread, so their done-callbacks run there: a put submitted from one (`in_loop`)
    must go elsewhere, or waiting for it there would wait for ever.
    """

    def __init__(self, wire: Wire, limit: int, name: str = "keepstore-puts") -> None:
        self._wire = wire
        self._limit = limit
        self._name = name
        self._lock = threading.Lock()
        self._queue: collections.deque[QueuedPut] = collections.deque()
        self._pump: CountedPump | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._unavailable = False

    def __repr__(self) -> str:
        return f"PutLoop(limit={self._limit}, queued={len(self._queue)}, closing={self._closing})"

    def submit(self, put: QueuedPut) -> bool:
        """Queue *put*; False (nothing queued) when the transport cannot overlap requests in one
        thread, so the caller runs it its own way. Raises `KeepError` once closed."""
        with self._lock:
            if self._closing:
                raise KeepError("this KeepClient is closed")
            if self._unavailable:
                return False
            if self._pump is None:
                self._pump = self._wire.pump()
                if self._pump is None:
                    self._unavailable = True
                    return False
            self._queue.append(put)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            pump = self._pump
        pump.wake()
        return True

    def in_loop(self) -> bool:
        """Whether the calling thread is the loop's own (a done-callback of one of its puts)."""
        return self._thread is not None and self._thread is threading.current_thread()

    def close(self) -> None:
        """Finish what is queued and running, then stop the thread and close the pump; idempotent."""
        with self._lock:
            self._closing = True
            thread, pump = self._thread, self._pump
        if pump is not None:
            pump.wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _take(self, room: int) -> tuple[list[QueuedPut], bool]:
        """Up to *room* queued puts, and whether the loop should stop (closing, nothing left)."""
        with self._lock:
            taken = [self._queue.popleft() for _ in range(min(room, len(self._queue)))]
            return taken, self._closing and not self._queue

    def _run(self) -> None:
        pump = self._pump
        assert pump is not None
        owners: dict[int, tuple[QueuedPut, Service]] = {}  # pump index -> its put and service
        active = 0  # puts with PUTs in flight
        try:
            while True:
                taken, stop = self._take(self._limit - active)
                while taken:  # until the limit is reached or nothing waits
                    for put in taken:
                        if not put.future.set_running_or_notify_cancel():
                            continue  # the caller cancelled it while it waited
                        started = put.begin()
                        for service, request in started:
                            owners[pump.add(service, request)] = (put, service)
                        if started:
                            active += 1
                        else:
                            put.end()
                    taken, stop = self._take(self._limit - active)
                if stop and not owners:
                    break
                for index, result in pump.step(None):
                    put, service = owners.pop(index)
                    for next_service, request in put.ended(service, result):
                        owners[pump.add(next_service, request)] = (put, next_service)
                    if put.running == 0:
                        active -= 1
                        put.end()
        except BaseException as exc:  # (a put must never be left without an answer)
            log.exception("the put loop failed")
            self._abandon({put for put, _ in owners.values()}, exc)
        finally:
            pump.close()

    def _abandon(self, running: set[QueuedPut], exc: BaseException) -> None:
        """Fail *running* and every queued put with *exc*; later puts go the caller's way."""
        with self._lock:
            self._unavailable = True
            self._thread = self._pump = None
            queued, self._queue = list(self._queue), collections.deque()
        for put in [*running, *queued]:
            put.fail(KeepError(f"the put loop failed: {exc!r}"))
