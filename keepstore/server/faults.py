"""FaultPlan: deterministic, scripted misbehaviour for a `KeepServer`, for tests."""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Iterable

__all__ = ["Fault", "FaultKind", "FaultPlan", "Gate"]

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
    HOLD = "hold"

    def __str__(self) -> str:
        return self.value


class Gate:
    """Where `FaultPlan.hold` makes requests wait until the test opens it: synchronisation
    without sleeps. It counts the requests waiting now (`waiting`), the most that ever waited
    at once (`peak`) and all that arrived (`arrived`); `wait_for(n)` blocks until *n* wait.
    """

    def __init__(self) -> None:
        self._state = threading.Condition()
        self._open = False
        self._waiting = 0
        self._peak = 0
        self._arrived = 0

    def __repr__(self) -> str:
        with self._state:
            state = "open" if self._open else "closed"
            return f"Gate({state}, waiting={self._waiting}, peak={self._peak}, arrived={self._arrived})"

    @property
    def waiting(self) -> int:
        """Requests waiting at the gate now."""
        with self._state:
            return self._waiting

    @property
    def peak(self) -> int:
        """The most requests that were waiting at the same time."""
        with self._state:
            return self._peak

    @property
    def arrived(self) -> int:
        """Requests that reached the gate so far (waiting or let through)."""
        with self._state:
            return self._arrived

    def open(self) -> None:
        """Let every waiting request, and every later one, through."""
        with self._state:
            self._open = True
            self._state.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        """Block until *n* requests wait at the gate at once; `TimeoutError` after *timeout* s."""
        with self._state:
            if not self._state.wait_for(lambda: self._waiting >= n, timeout):
                raise TimeoutError(f"{self._waiting} request(s) waited at the gate, not {n}, "
                                   f"within {timeout:g}s ({self._arrived} arrived)")

    def pass_through(self, timeout: float | None) -> bool:
        """Called by the server: wait until the gate opens (at most *timeout* s); True if it did."""
        with self._state:
            self._arrived += 1
            self._waiting += 1
            self._peak = max(self._peak, self._waiting)
            self._state.notify_all()
            try:
                return self._state.wait_for(lambda: self._open, timeout)
            finally:
                self._waiting -= 1
                self._state.notify_all()


@dataclasses.dataclass
class Fault:
    """One rule: what to do to the next *times* matching requests (``None`` = until cleared).

    A request matches when its method is in *methods* and, if *block* is set, its path names
    that md5. ``value`` means: the status code (``status``), seconds (``delay``, ``stall``), or
    bytes per second (``throttle``), at most seconds to wait (``hold``; 0: no limit). *gate* is
    the `Gate` a ``hold`` waits at.

    Args:
        kind: What to do.
        methods: The methods it applies to.
        times: How many matching requests it applies to (None: until cleared).
        value: The status code (``status``), seconds (``delay``, ``stall``) or bytes per second (``throttle``).
        block: Only requests naming this md5, if set.
        retry_after: The ``Retry-After`` to send with a status, if any.
        hits: Requests it has applied to so far.
        gate: A `Gate` matching requests wait at until a test opens it (the ``hold`` fault).
    """

    kind: FaultKind
    methods: frozenset[str]
    times: int | None = 1
    value: float = 0.0
    block: str | None = None
    retry_after: float | None = None
    hits: int = 0
    gate: Gate | None = None

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
             block: str | None = None, retry_after: float | None = None, gate: Gate | None = None) -> Fault:
        wanted = frozenset(m.upper() for m in (methods.split() if isinstance(methods, str) else methods))
        return self.add(Fault(FaultKind(kind), wanted, times, float(value), block, retry_after, gate=gate))

    def add(self, rule: Fault) -> Fault:
        """Add *rule* as it is (the methods below build one each); it is checked first."""
        unknown = rule.methods - _METHODS
        if unknown or not rule.methods:
            raise ValueError(f"fault methods must be some of GET HEAD PUT, got {sorted(unknown) or 'none'}")
        if rule.times is not None and rule.times < 1:
            raise ValueError(f"fault times must be at least 1 or None, got {rule.times}")
        if rule.value < 0:
            raise ValueError(f"fault {rule.kind} needs a value >= 0, got {rule.value}")
        if (rule.kind is FaultKind.HOLD) != (rule.gate is not None):
            raise ValueError("a hold fault, and only a hold fault, needs a gate")
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

    def hold(self, gate: Gate, *, times: int | None = 1, methods: Iterable[str] | str = "GET HEAD PUT",
             block: str | None = None, timeout: float = 30.0) -> Fault:
        """Make the request wait at *gate* until the test opens it (at most *timeout* s, then
        go on), before handling it normally. The gate counts who waits: see `Gate`."""
        if timeout <= 0:
            raise ValueError("hold() needs a positive timeout")
        return self._add(FaultKind.HOLD, methods, times, timeout, block, gate=gate)

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
        if not self._rules:  # no faults planned (the common case): no lock to take
            return None
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
    def planned(self) -> bool:
        """Whether any rule was added since the last `clear()` (spent ones included): read
        without the lock, by a request that takes no fault when there is none."""
        return bool(self._rules)

    @property
    def pending(self) -> int:
        """How many uses of counted rules are left (rules without a count are not included)."""
        with self._lock:
            return sum(r.times - r.hits for r in self._rules if r.times is not None)
