"""Configuration values: `Timeout` and `Retry` (Settings lives in `keepstore.settings`)."""

from __future__ import annotations

import dataclasses
import importlib
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, KeepError

if TYPE_CHECKING:  # for type checkers; at run time `__getattr__` below finds them
    from .settings import Settings, default_config_path

__all__ = ["Retry", "RetryRound", "Settings", "Timeout", "default_config_path"]


@dataclasses.dataclass(frozen=True)
class Timeout:
    """Connection timeouts, Arvados style.

    ``connect`` seconds to open a connection (doubled each retry round, up to
    ``max_connect``); a transfer fails when it moves fewer than ``min_bandwidth`` bytes/s
    for ``read`` seconds in a row. The same limits apply to GET, PUT and HEAD.

    Every request also has an overall deadline (`deadline`): ``total`` seconds when set, else
    the time a transfer of the request's bytes needs at ``min_bandwidth``, plus ``connect``
    and ``read`` as slack. A server that keeps a transfer just above the minimum rate forever
    (an endless header or body) is cut off there.

    Args:
        connect: Seconds to connect in the first round.
        read: Seconds a transfer may stay below *min_bandwidth*.
        min_bandwidth: Bytes per second a transfer must keep up.
        max_connect: Cap on the connect timeout as it doubles round by round.
        total: Seconds every request may take in all; None for the size-based default.

    Raises:
        ConfigError: a value that is not a positive (finite) number.
    """

    connect: float = 2.0
    read: float = 256.0
    min_bandwidth: int = 32768
    max_connect: float = 60.0
    total: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "read", "max_connect"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise ConfigError(f"Timeout.{name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.min_bandwidth, bool) or not isinstance(self.min_bandwidth, int) or self.min_bandwidth < 1:
            raise ConfigError(f"Timeout.min_bandwidth must be a positive integer (bytes/s), got {self.min_bandwidth!r}")
        if self.total is not None and (isinstance(self.total, bool) or not isinstance(self.total, (int, float))
                                       or not self.total > 0 or math.isinf(self.total)):
            raise ConfigError(f"Timeout.total must be a positive number of seconds or None, got {self.total!r}")

    @classmethod
    def from_value(cls, value: "Timeout | float | tuple[float, ...] | None") -> "Timeout":
        """Accept a Timeout, a number (connect and read), or an Arvados-style tuple."""
        if value is None:
            return cls()
        if isinstance(value, Timeout):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(connect=float(value), read=float(value))
        if isinstance(value, (tuple, list)) and 1 <= len(value) <= 3:
            names = ("connect", "read", "min_bandwidth")
            fields: dict[str, Any] = dict(zip(names, value, strict=False))
            return cls(**fields)
        raise ConfigError(f"invalid timeout {value!r}: want Timeout, seconds, or (connect, read, min_bandwidth)")

    def for_round(self, round_number: int) -> "Timeout":
        """The timeout for retry round *round_number* (0-based): connect doubles, with a cap."""
        if round_number <= 0:
            return self  # the first round's: as configured (no copy on every request)
        connect = min(self.max_connect, self.connect * (2 ** round_number))
        return dataclasses.replace(self, connect=max(connect, self.connect))

    def __repr__(self) -> str:
        # ``total`` shows only when set, so reprs (and the docs quoting them) read as before it existed.
        extra = f", total={self.total!r}" if self.total is not None else ""
        return (f"Timeout(connect={self.connect!r}, read={self.read!r}, min_bandwidth={self.min_bandwidth!r}, "
                f"max_connect={self.max_connect!r}{extra})")

    def deadline(self, nbytes: int = 0) -> float:
        """Seconds one request moving *nbytes* (up and down) may take in all."""
        if self.total is not None:
            return float(self.total)
        return self.connect + self.read + nbytes / self.min_bandwidth

    def __str__(self) -> str:
        text = f"connect={self.connect:g}s read={self.read:g}s min_bandwidth={self.min_bandwidth}B/s"
        return text + (f" total={self.total:g}s" if self.total is not None else "")


@dataclasses.dataclass(frozen=True)
class RetryRound:
    """One failed round as `Retry.history` records it: what went wrong, and any Retry-After.

    Args:
        error: What went wrong in the round.
        retry_after: The ``Retry-After`` a service asked for, in seconds, if any.
    """

    error: str = ""
    retry_after: float | None = None


@dataclasses.dataclass(frozen=True)
class Retry:
    """An immutable retry policy: ``retry = retry.increment(error)`` returns the next state.

    As urllib3's ``Retry.increment``, it decides when retries are exhausted (``increment``
    raises *error* once ``total`` retries are used, so callers never check `remaining`
    first) and keeps the history of failed rounds (``history``). Backoff is exponential with
    full jitter: round n waits a random time in [0, min(backoff_max, backoff_initial * 2**(n-1))],
    or at least a server's ``Retry-After`` (capped at ``backoff_max``).

    ``deadline`` bounds the whole operation (every round and wait) in seconds from its first
    attempt: no round starts after it, backoff waits end by it, and a round's connect and
    read (stall) timeouts are held to the time left, so a server that accepts and then says
    nothing is given up on too. A transfer still moving at ``min_bandwidth`` is not cut off
    by it (`Timeout` bounds those).

    Args:
        total: Retry rounds allowed after the first.
        backoff_initial: Ceiling of the first wait, in seconds.
        backoff_max: Cap on every wait (a server's ``Retry-After`` included).
        deadline: Seconds the operation may spend retrying in all; None for no limit.
        attempt: Rounds used so far (`increment` counts it).
        retry_after: The last ``Retry-After`` seen, if any.
        history: The failed rounds so far (`increment` records them).

    Raises:
        ConfigError: a negative *total*, backoffs not ``0 <= backoff_initial <= backoff_max``,
            or a *deadline* that is not a positive number of seconds.
    """

    total: int = 10
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    deadline: float | None = None
    attempt: int = 0
    retry_after: float | None = None
    history: tuple[RetryRound, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.total, bool) or not isinstance(self.total, int) or self.total < 0:
            raise ConfigError(f"Retry.total must be a non-negative integer, got {self.total!r}")
        for name in ("backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ConfigError(f"Retry.{name} must be a number of seconds, got {value!r}")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ConfigError(
                f"Retry backoff must satisfy 0 <= backoff_initial <= backoff_max, "
                f"got {self.backoff_initial!r} and {self.backoff_max!r}"
            )
        if self.deadline is not None and (isinstance(self.deadline, bool) or not isinstance(self.deadline, (int, float))
                                          or not self.deadline > 0 or math.isinf(self.deadline)):
            raise ConfigError(f"Retry.deadline must be a positive number of seconds or None, got {self.deadline!r}")

    @classmethod
    def from_value(cls, value: "Retry | int | None") -> "Retry":
        """Accept a Retry, a number of retries, or None (the default policy)."""
        if value is None:
            return cls()
        if isinstance(value, Retry):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(total=value)
        raise ConfigError(f"invalid retries {value!r}: want Retry or a non-negative integer")

    @property
    def remaining(self) -> int:
        """Retries not yet used."""
        return self.total - self.attempt

    @property
    def is_exhausted(self) -> bool:
        """True when the next `increment` raises."""
        return self.attempt >= self.total

    def increment(self, error: BaseException | None = None, *, retry_after: float | None = None) -> "Retry":
        """The policy after one more failed round (recorded in ``history``).

        Raises *error* (a `KeepError` saying so when None) when no retries are left.
        """
        if self.is_exhausted:
            raise error if error is not None else KeepError(f"all {self.total} retries used")
        entry = RetryRound(str(error) if error is not None else "", retry_after)
        return dataclasses.replace(self, attempt=self.attempt + 1, retry_after=retry_after,
                                   history=(*self.history, entry))

    def backoff(self, rng: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds to wait before the next round (0 before the first)."""
        if self.attempt == 0:
            return 0.0
        # Cap the exponent: 2**1100 does not fit a float, and 2**64 rounds already exceed any cap.
        ceiling = min(self.backoff_max, self.backoff_initial * (2.0 ** min(self.attempt - 1, 64)))
        wait = rng(0.0, ceiling)
        if self.retry_after is not None:
            wait = max(wait, min(self.retry_after, self.backoff_max))
        return wait

    def sleep(self, sleeper: Callable[[float], Any] = time.sleep) -> float:
        """Sleep for `backoff()` using *sleeper*; return the time slept."""
        wait = self.backoff()
        if wait > 0:
            sleeper(wait)
        return wait


def __getattr__(name: str) -> Any:
    """``from keepstore.config import Settings`` keeps working: Settings now lives in `keepstore.settings`.

    Looked up lazily, as `keepstore.settings` imports `Timeout` from here (no import cycle).
    """
    if name in ("Settings", "default_config_path"):
        return getattr(importlib.import_module("keepstore.settings"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
