"""Hedged reads' policy and state: decaying failure scores per service, a hedge delay learned from first bytes."""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import ConfigError
from ..services import Service

__all__ = ["HedgePolicy", "ServiceHealth"]

# The delay is recomputed (a sort of the window) after this many new first bytes, not each one.
_RECOMPUTE_EVERY = 8


@dataclasses.dataclass(frozen=True)
class HedgePolicy:
    """When a GET also asks the next replica, and how long a failure keeps a service at the back.

    The hedge delay is ``multiplier`` times the ``percentile`` of a service's last ``window``
    times to first byte (status and headers), for the service where that is least (the
    fastest: one slow replica must not teach the client to wait for it), kept between ``floor``
    and ``cap``; ``initial`` (also kept between them) until some service has ``min_samples``.
    Only a first byte counts: a transfer whose answer has started streaming is never doubled,
    however long its body takes.

    Args:
        enabled: Hedge GETs at all (False: one replica at a time). Fail-back ordering stays on.
        percentile: Of a service's recent first-byte times, the one the delay is a multiple of.
        multiplier: How many times that percentile a first byte may take before the next
            replica is asked too.
        floor: The shortest delay, in seconds: below it, scheduling noise on a busy machine
            would ask healthy servers twice.
        cap: The longest delay, in seconds.
        initial: The delay until ``min_samples`` first bytes have been timed, in seconds.
        window: How many recent first-byte times are kept per service.
        min_samples: First bytes timed from a service before its percentile is trusted.
        half_life: Seconds in which a service's failure score halves.
        threshold: A service whose score is at least this is tried after the healthy ones. A
            failure (no answer, a transient status, a damaged body, or no first byte within the
            delay while another replica answered) adds 1, so with the default one failure keeps a
            service at the back for one half-life.
    """

    enabled: bool = True
    percentile: float = 95.0
    multiplier: float = 2.0
    floor: float = 0.05
    cap: float = 1.0
    initial: float = 0.1
    window: int = 64
    min_samples: int = 8
    half_life: float = 30.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"hedge percentile must be in (0, 100], got {self.percentile!r}")
        if not self.multiplier > 0:
            raise ConfigError(f"hedge multiplier must be > 0, got {self.multiplier!r}")
        if not 0 <= self.floor <= self.cap or not self.initial >= 0:
            raise ConfigError(f"hedge delays need 0 <= floor <= cap and initial >= 0, got floor {self.floor!r}, "
                              f"cap {self.cap!r}, initial {self.initial!r}")
        if not (self.half_life > 0 and self.threshold > 0):
            raise ConfigError(f"hedge half_life and threshold must be > 0, got {self.half_life!r}, {self.threshold!r}")
        if self.window < 1 or self.min_samples < 1:
            raise ConfigError(f"hedge window and min_samples must be at least 1, got {self.window}, {self.min_samples}")


class ServiceHealth:
    """Decaying failure scores and windows of recent first-byte times, per service root (thread-safe).

    Args:
        policy: The `HedgePolicy`.
        clock: Monotonic seconds the scores decay on (tests pass their own).
    """

    def __init__(self, policy: HedgePolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or HedgePolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._scores: dict[str, tuple[float, float]] = {}  # root -> (score, when it was last raised)
        self._first_bytes: dict[str, collections.deque[float]] = {}  # root -> recent first-byte seconds
        self._delay: float | None = None  # computed from _first_bytes when asked; None: stale
        self._fresh = 0  # first bytes added since _delay was computed

    def __repr__(self) -> str:
        with self._lock:
            failed = sorted(self._scores)
        return f"ServiceHealth(delay={self.hedge_delay():.3f}s, failed={failed})"  # roots, never a token

    def _decayed(self, root: str, now: float) -> float:
        score, when = self._scores.get(root, (0.0, now))
        return score * 0.5 ** (max(0.0, now - when) / self.policy.half_life)

    def failed(self, root: str, weight: float = 1.0) -> None:
        """One failure of *root*: no answer, a transient status, a damaged body, or too slow a first byte."""
        with self._lock:
            now = self._clock()
            self._scores[root] = (self._decayed(root, now) + weight, now)

    def first_byte(self, root: str, seconds: float) -> None:
        """*root*'s status and headers came *seconds* after the request started."""
        window = self._first_bytes.get(root)
        if window is None:
            with self._lock:
                window = self._first_bytes.setdefault(root, collections.deque(maxlen=self.policy.window))
        # Lock-free on every GET: a deque's append is atomic, and a count lost between threads
        # only delays the next recomputation of the delay by one sample.
        window.append(seconds)
        self._fresh += 1
        if self._fresh >= _RECOMPUTE_EVERY or len(window) <= self.policy.min_samples:
            self._delay, self._fresh = None, 0

    def score(self, root: str) -> float:
        """*root*'s failure score now (0: no recent failure)."""
        with self._lock:
            return self._decayed(root, self._clock())

    def order(self, services: Sequence[Service]) -> list[Service]:
        """*services* (in probe order) with those whose score is at the threshold or above moved
        to the back, least failed first; the others keep their order."""
        with self._lock:
            if not self._scores:
                return list(services)
            now = self._clock()
            scores = {s.root: self._decayed(s.root, now) for s in services}
            for root in [r for r in self._scores if self._decayed(r, now) < 0.01]:
                del self._scores[root]  # healed long ago: forget it (the map stays small)
        threshold = self.policy.threshold
        return sorted(services, key=lambda s: scores[s.root] if scores[s.root] >= threshold else 0.0)

    def hedge_delay(self) -> float:
        """Seconds a GET waits for its first byte before the next replica is asked too."""
        delay = self._delay
        if delay is not None:  # fresh: one attribute read needs no lock
            return delay
        policy = self.policy
        with self._lock:
            if self._delay is None:
                learned = [self._percentile(window) for window in list(self._first_bytes.values())
                           if len(window) >= policy.min_samples]
                delay = policy.multiplier * min(learned) if learned else policy.initial
                self._delay = min(policy.cap, max(policy.floor, delay))
            return self._delay

    def _percentile(self, window: collections.deque[float]) -> float:
        samples = sorted(list(window))  # a copy first: another thread may append meanwhile
        return samples[max(0, math.ceil(self.policy.percentile / 100 * len(samples)) - 1)]
