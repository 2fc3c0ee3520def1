"""FaultPlan: deterministic, scripted misbehaviour for a `KeepServer`, for tests."""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Iterable

__all__ = ["Fault", "FaultKind", "FaultPlan"]

_METHODS = frozenset({"GET", "HEAD", "PUT"})


class FaultKind(str, enum.Enum):
    """What a fault does (a ``str`` enum: ``FaultKind.DROP == "drop"``)."""

    STATUS = "status"
    DELAY = "delay"
    THROTTLE = "throttle"
    STALL = "stall"
    CORRUPT = "corrupt"
    TRUNCATE = "truncate"
    DROP = "drop"
    FULL = "full"

    def __str__(self) -> str:
        return self.value




@dataclasses.dataclass
class Fault:
    """One rule: what to do to the next *times* matching requests (``None`` = until cleared).

    A request matches when its method is in *methods* and, if *block* is set, its path names
    that md5. ``value`` means: the status code (``status``), seconds (``delay``, ``stall``), or
    bytes per second (``throttle``).
    """

    kind: FaultKind
    methods: frozenset[str]
    times: int | None = 1
    value: float = 0.0
    block: str | None = None
    retry_after: float | None = None
    hits: int = 0

    def matches(self, method: str, md5: str | None) -> bool:
        if method not in self.methods:
            return False
        if self.block is not None and md5 != self.block:
            return False
        return self.times is None or self.hits < self.times


class FaultPlan:
    """The faults a server applies, consumed in the order they were added.

    Each request takes the first rule that matches it (by method and optionally block md5)
    and uses one of its *times*. Everything is deterministic: no randomness, no clocks
    beyond the delays asked for. Thread-safe. ``times=None`` keeps a rule until `clear()`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []

    def __repr__(self) -> str:
        with self._lock:
            active = [f"{r.kind.value}({r.value:g})x{'inf' if r.times is None else r.times - r.hits}"
                      for r in self._rules if r.times is None or r.hits < r.times]
        return f"FaultPlan([{', '.join(active)}])"

    def _add(self, kind: FaultKind, methods: Iterable[str] | str, times: int | None, value: float = 0.0,
             block: str | None = None, retry_after: float | None = None) -> Fault:
        wanted = frozenset(m.upper() for m in (methods.split() if isinstance(methods, str) else methods))
        unknown = wanted - _METHODS
        if unknown or not wanted:
            raise ValueError(f"fault methods must be some of GET HEAD PUT, got {sorted(unknown) or 'none'}")
        if times is not None and times < 1:
            raise ValueError(f"fault times must be at least 1 or None, got {times}")
        if value < 0:
            raise ValueError(f"fault {kind} needs a value >= 0, got {value}")
        rule = Fault(FaultKind(kind), wanted, times, float(value), block, retry_after)
        with self._lock:
            self._rules.append(rule)
        return rule

    # -- the faults -----------------------------------------------------------------------

    def fail(self, status: int = 503, *, times: int | None = 1, methods: Iterable[str] | str = "GET HEAD PUT",
             retry_after: float | None = None, block: str | None = None) -> Fault:
        """Answer with *status* (after draining any PUT body); optionally send ``Retry-After``."""
        if not 400 <= status <= 599:
            raise ValueError(f"fail() needs a 4xx or 5xx status, got {status}")
        return self._add(FaultKind.STATUS, methods, times, status, block, retry_after)

    def delay(self, seconds: float, *, times: int | None = 1, methods: Iterable[str] | str = "GET HEAD PUT",
              block: str | None = None) -> Fault:
        """Wait *seconds* before handling the request normally."""
        return self._add(FaultKind.DELAY, methods, times, seconds, block)

    def throttle(self, bytes_per_second: float, *, times: int | None = 1,
                 methods: Iterable[str] | str = "GET", block: str | None = None) -> Fault:
        """Send the response body no faster than *bytes_per_second* (a slow drip)."""
        if bytes_per_second <= 0:
            raise ValueError("throttle() needs a positive rate")
        return self._add(FaultKind.THROTTLE, methods, times, bytes_per_second, block)

    def stall(self, seconds: float, *, times: int | None = 1, methods: Iterable[str] | str = "GET HEAD",
              block: str | None = None) -> Fault:
        """Send the status line and headers, then nothing for *seconds* (HEAD: before answering)."""
        return self._add(FaultKind.STALL, methods, times, seconds, block)

    def corrupt(self, *, times: int | None = 1, block: str | None = None) -> Fault:
        """Flip one byte in the middle of a GET body (length unchanged)."""
        return self._add(FaultKind.CORRUPT, "GET", times, 0.0, block)

    def truncate(self, *, times: int | None = 1, block: str | None = None) -> Fault:
        """Announce the full length but send only half the GET body, then close."""
        return self._add(FaultKind.TRUNCATE, "GET", times, 0.0, block)

    def drop(self, *, times: int | None = 1, methods: Iterable[str] | str = "GET HEAD PUT",
             block: str | None = None) -> Fault:
        """Close the connection without answering."""
        return self._add(FaultKind.DROP, methods, times, 0.0, block)

    def full(self, *, times: int | None = None) -> Fault:
        """Behave as if every volume were full: PUTs of new blocks get 507."""
        return self._add(FaultKind.FULL, "PUT", times)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    # -- used by the server ---------------------------------------------------------------

    def take(self, method: str, md5: str | None, *, skip: Iterable[FaultKind] = (),
             only: Iterable[FaultKind] | None = None) -> Fault | None:
        """The first rule matching this request, with one of its uses consumed.

        *skip* / *only* limit the kinds considered: the server takes ``full`` rules only where
        a new block would be written, so a PUT of a block already stored does not spend one.
        """
        skipped, wanted = set(skip), None if only is None else set(only)
        with self._lock:
            for rule in self._rules:
                if rule.kind in skipped or (wanted is not None and rule.kind not in wanted):
                    continue
                if rule.matches(method, md5):
                    rule.hits += 1
                    return dataclasses.replace(rule)
        return None

    @property
    def pending(self) -> int:
        """How many uses of counted rules are left (rules without a count are not included)."""
        with self._lock:
            return sum(r.times - r.hits for r in self._rules if r.times is not None)
