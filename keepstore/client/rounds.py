"""The one retry-round loop that reads and writes share: run a round, give up or back off, repeat."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ..config import Retry
from ..errors import KeepError

__all__ = ["GiveUp", "RoundJob", "RoundPolicy", "RoundResult", "run_rounds"]

T = TypeVar("T")


class GiveUp(enum.Enum):
    """Why a job stops before it succeeded."""

    HOPELESS = "no service left that could help"
    EXHAUSTED = "retries used up"
    CLOSED = "the client was closed"


@dataclasses.dataclass(frozen=True)
class RoundResult(Generic[T]):
    """What one round of a job gave: its value when ``done``; else whether another round could
    help, and the largest Retry-After a service asked for."""

    done: bool = False
    value: T | None = None
    hopeful: bool = True
    retry_after: float | None = None


class RoundJob(Protocol[T]):
    """One read or write, run round by round."""

    def run_round(self, number: int) -> "RoundResult[T]":
        """Try every candidate service once (*number* counts rounds from 0); may raise a final error."""

    def give_up(self, why: GiveUp, rounds: int) -> KeepError:
        """The error to raise after *rounds* rounds, for *why*."""


@dataclasses.dataclass(frozen=True)
class RoundPolicy:
    """What the loop needs of its client: the retry policy, the sleep function, whether the
    client is closed, and a callback counting each retry."""

    retry: Retry
    sleep: Callable[[float], Any]
    is_closed: Callable[[], bool]
    on_retry: Callable[[], None]


def run_rounds(job: RoundJob[T], policy: RoundPolicy) -> T:
    """Run *job* round by round until a round is done; raise ``job.give_up(...)`` when a round
    leaves no hope, the retries are used up (`Retry.increment` decides), or the client closed."""
    retry = policy.retry
    number = 0
    while True:
        result = job.run_round(number)
        if result.done:
            return result.value  # type: ignore[return-value]  # a done round carries its value
        rounds = number + 1
        if not result.hopeful:
            raise job.give_up(GiveUp.HOPELESS, rounds)
        retry = retry.increment(job.give_up(GiveUp.EXHAUSTED, rounds), retry_after=result.retry_after)
        if policy.is_closed():  # closed under us: its transport refuses every request now
            raise job.give_up(GiveUp.CLOSED, rounds)
        policy.on_retry()
        retry.sleep(policy.sleep)
        number += 1
