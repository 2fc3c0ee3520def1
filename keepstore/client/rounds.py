"""The one retry-round loop that reads and writes share: run a round, give up or back off, repeat."""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from ..config import Retry, Timeout
from ..errors import Cancelled, KeepError

__all__ = ["GiveUp", "RetryNotice", "RoundJob", "RoundPolicy", "RoundResult", "round_timeout", "run_rounds"]

log = logging.getLogger("keepstore.client")

T = TypeVar("T")

# A deadline never cuts a round's timeouts below this (a connect needs some time).
MIN_CONNECT = 0.05


class GiveUp(enum.Enum):
    """Why a job stops before it succeeded."""

    HOPELESS = "no service left that could help"
    EXHAUSTED = "retries used up"
    CLOSED = "the client was closed"
    DEADLINE = "the deadline passed"


@dataclasses.dataclass(frozen=True)
class RoundResult(Generic[T]):
    """What one round of a job gave: its value when ``done``; else whether another round could
    help, the largest Retry-After a service asked for, and what failed where (service root ->
    the cause, for `RetryNotice`).

    Args:
        done: True when the round finished the job.
        value: The job's value, when done.
        hopeful: False when no further round could help (every service gave a final answer).
        retry_after: The largest ``Retry-After`` a service asked for, in seconds, if any.
        failures: What failed where in the round (service root -> the cause).
    """

    done: bool = False
    value: T | None = None
    hopeful: bool = True
    retry_after: float | None = None
    failures: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RetryNotice:
    """One failed round that will be retried: what failed where, and when the next round starts.

    Handed to a client's ``on_retry`` callback (``keep`` prints one line per service and
    cause from it) and logged at INFO on ``keepstore.client``.

    Args:
        operation: ``GET``, ``HEAD`` or ``PUT``.
        locator: The block's locator (bare: no signature).
        round: The round that failed, counted from 1.
        rounds: The most rounds the retry policy allows (``total + 1``).
        wait: Seconds until the next round starts.
        failures: Service root -> what went wrong there this round (never a token).
    """

    operation: str
    locator: str
    round: int
    rounds: int
    wait: float
    failures: Mapping[str, str]

    def lines(self) -> list[str]:
        """One line per failing service: ``PUT http://h:25107/: 503 busy (round 2 of 11, next attempt in 1.3 s)``."""
        when = f"round {self.round} of {self.rounds}, next attempt in {self.wait:.1f} s"
        return [f"{self.operation} {root}: {cause.removeprefix(self.operation + ' ')} ({when})"
                for root, cause in self.failures.items()]


class RoundJob(Protocol[T]):
    """One read or write, run round by round."""

    operation: str  # GET, HEAD or PUT

    @property
    def subject(self) -> str:
        """The block's locator, for messages."""

    def run_round(self, number: int, timeout: Timeout) -> "RoundResult[T]":
        """Try every candidate service once (*number* counts rounds from 0) with *timeout*; may
        raise a final error."""

    def give_up(self, why: GiveUp, rounds: int) -> KeepError:
        """The error to raise after *rounds* rounds, for *why*."""


def _no_notice(notice: RetryNotice) -> None:
    """The default ``on_retry``: nothing beyond the log line."""


@dataclasses.dataclass(frozen=True)
class RoundPolicy:
    """What the loop needs of its client: the retry policy and timeout, the sleep function,
    whether the client is closed, a callback counting each retry, the cancel event, the clock
    the deadline is measured on, and the callback told of each retry (`RetryNotice`).

    ``sleep`` None waits on ``cancel``, so that a cancel ends a backoff wait at once.

    Args:
        retry: The retry policy of the operation (its `Retry.increment` decides when to give up).
        sleep: How to wait between rounds (``time.sleep``, or a test's fake clock).
        is_closed: True once the client is closed: the loop then gives up.
        on_retry: Called before each retry round (the client counts retries with it).
        timeout: The operation's timeouts (each round's, cut to what the deadline leaves).
        cancel: Set to cancel: the loop stops before the next round and backoff waits end at once.
        clock: The monotonic clock deadlines are measured with.
        notify: Called with a `RetryNotice` before each retry's wait.
    """

    retry: Retry
    sleep: Callable[[float], Any] | None
    is_closed: Callable[[], bool]
    on_retry: Callable[[], None]
    timeout: Timeout = dataclasses.field(default_factory=Timeout)
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    notify: Callable[[RetryNotice], None] = _no_notice

    def wait(self, seconds: float) -> None:
        """Back off for *seconds*, or less when cancelled."""
        if seconds <= 0:
            return
        if self.sleep is None:
            self.cancel.wait(seconds)
        else:
            self.sleep(seconds)


def round_timeout(policy: RoundPolicy, number: int, deadline: float | None) -> Timeout:
    """The timeouts of round *number* (from 0): the policy's for that round, cut to what the
    *deadline* (on the policy's clock) leaves; a stalled server is cut off too, a transfer
    moving at min_bandwidth is not."""
    timeout = policy.timeout.for_round(number)
    if deadline is not None:
        left = deadline - policy.clock()
        timeout = dataclasses.replace(timeout, connect=max(MIN_CONNECT, min(timeout.connect, left)),
                                      read=max(MIN_CONNECT, min(timeout.read, left)))
    return timeout


def run_rounds(job: RoundJob[T], policy: RoundPolicy, *, first: RoundResult[T] | None = None,
               started: float | None = None) -> T:
    """Run *job* round by round until a round is done; raise ``job.give_up(...)`` when a round
    leaves no hope, the retries are used up (`Retry.increment` decides), the deadline passed
    or the client closed, and `Cancelled` once the policy's cancel event is set.

    *first*, when given, is what round 0 gave, run elsewhere (the client's put loop) from
    *started* (the policy's clock): the rounds go on from there, under the same deadline.
    """
    retry = policy.retry
    begun = policy.clock() if started is None else started
    deadline = None if retry.deadline is None else begun + retry.deadline
    number = 0
    last = False  # the round about to run is the last the deadline allows
    while True:
        if first is not None:
            result, first = first, None
        else:
            if policy.cancel.is_set():
                raise Cancelled(f"{job.operation} {job.subject} cancelled")
            result = job.run_round(number, round_timeout(policy, number, deadline))
        if result.done:
            return result.value  # type: ignore[return-value]  # a done round carries its value
        if policy.cancel.is_set():
            raise Cancelled(f"{job.operation} {job.subject} cancelled")
        rounds = number + 1
        if not result.hopeful:
            raise job.give_up(GiveUp.HOPELESS, rounds)
        retry = retry.increment(job.give_up(GiveUp.EXHAUSTED, rounds), retry_after=result.retry_after)
        if policy.is_closed():  # closed under us: its transport refuses every request now
            raise job.give_up(GiveUp.CLOSED, rounds)
        wait = retry.backoff()
        if deadline is not None:
            left = deadline - policy.clock()
            if last or left <= MIN_CONNECT:
                raise job.give_up(GiveUp.DEADLINE, rounds)
            if wait >= left - MIN_CONNECT:  # one last round, just before the deadline
                wait, last = left - MIN_CONNECT, True
        policy.on_retry()
        notice = RetryNotice(job.operation, job.subject, rounds, retry.total + 1, wait, dict(result.failures))
        for line in notice.lines():
            log.info("%s", line)
        policy.notify(notice)
        policy.wait(wait)
        number += 1
