"""Batches: many puts, gets and heads run in parallel on a client's pool, collected in submission order."""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Collection, Iterable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, Union

from .errors import KeepError
from .locator import Locator, LocatorLike
from .store import Data

__all__ = ["RAISE_FIRST", "RAISE_NEVER", "AsyncStore", "Batch", "Outcome", "Raise", "RaisePolicy"]

T = TypeVar("T")


class Raise(str, enum.Enum):
    """Which failures `Batch.wait` raises (besides a set of acceptable exception classes).

    A ``str`` enum, so the text ``"first"`` and ``"never"`` keep working.
    """

    FIRST = "first"  # the first failure, as soon as it happens
    NEVER = "never"  # none: every failure is an outcome


RAISE_FIRST = Raise.FIRST
RAISE_NEVER = Raise.NEVER

#: `Raise` (or its text), or the exception class(es) that count as acceptable outcomes.
RaisePolicy = Union[Raise, str, type[BaseException], Collection[type[BaseException]]]


class AsyncStore(Protocol):
    """What a `Batch` needs of its client: operations that return futures (`KeepClient` has them)."""

    def put_async(self, data: Data, *, copies: int | None = None,
                  storage_classes: Iterable[str] | None = None) -> Future[Locator]: ...

    def get_async(self, locator: LocatorLike) -> Future[bytes]: ...

    def head_async(self, locator: LocatorLike) -> Future[bool]: ...


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one queued operation gave: its value, or the exception it raised.

    Args:
        index: The operation's position in submission order.
        op: ``"put"``, ``"get"`` or ``"head"``.
        target: The locator asked for (for a put, the data's size).
        value: What the operation returned (None when it raised).
        error: The exception it raised, or None.
    """

    index: int
    op: str
    target: str
    value: T | None = None
    error: BaseException | None = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the operation returned a value."""
        return self.error is None

    @property
    def cancelled(self) -> bool:
        """True when the operation was cancelled before it ran."""
        return isinstance(self.error, CancelledError)

    def result(self) -> T:
        """The value, or raise the operation's exception."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # None is a value only for ops returning None


def check_policy(policy: RaisePolicy) -> RaisePolicy:
    """Return *policy* when it is valid; raise `ValueError` naming the choices when it is not."""
    if isinstance(policy, str):
        try:
            return Raise(policy)
        except ValueError:
            raise ValueError(f"raise_for_status must be 'first', 'never' or a set of exception classes, "
                             f"got {policy!r}") from None
    if isinstance(policy, type) and issubclass(policy, BaseException):
        return frozenset({policy})  # one class: as good as a set of one
    try:
        classes = tuple(policy)
    except TypeError:  # None, a number...: not a collection at all
        raise ValueError(f"raise_for_status must be 'first', 'never' or a set of exception classes, "
                         f"got {policy!r}") from None
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise ValueError(f"raise_for_status: a set of exception classes was expected, got {policy!r}")
    return frozenset(classes)


def _acceptable(error: BaseException, policy: RaisePolicy) -> bool:
    """Whether *error* is returned as an outcome (True) or raised from `Batch.wait` (False)."""
    if policy is Raise.NEVER:
        return True
    if policy is Raise.FIRST:
        return False
    return isinstance(error, tuple(policy))  # type: ignore[arg-type]


@dataclasses.dataclass
class _Op:
    index: int
    op: str
    target: str
    future: Future[Any]
    cancelled_by_us: bool = False


class Batch:
    """Operations queued on a `KeepClient`'s task pool, run in parallel, collected in order.

    Made by `KeepClient.batch`. Each ``put``/``get``/``head`` starts at once (up to the pool's
    size in parallel) and returns its `Future`. `wait` returns one `Outcome` per operation in
    submission order. Leaving the ``with`` block waits with the batch's policy unless `wait`
    was already called; if the block raised, queued work is cancelled instead, running work is
    waited for, and the block's exception goes on. See ``docs/concurrency.md``.

    Args:
        client: What runs the operations: anything with ``put_async``, ``get_async`` and
            ``head_async`` (`AsyncStore`), usually the `KeepClient`.
        raise_for_status: Which failures `wait` raises: `Raise.FIRST` (default), `Raise.NEVER`,
            their text, or exception classes that count as acceptable outcomes.

    Raises:
        ValueError: an invalid *raise_for_status*.
    """

    def __init__(self, client: AsyncStore, raise_for_status: RaisePolicy = RAISE_FIRST) -> None:
        self._client = client
        self.raise_for_status = check_policy(raise_for_status)
        self._ops: list[_Op] = []
        self._lock = threading.Lock()
        self._waited = False
        self._closed = False

    def __repr__(self) -> str:
        done = sum(op.future.done() for op in self._ops)
        return f"Batch({len(self._ops)} operations, {done} done)"

    def __len__(self) -> int:
        return len(self._ops)

    # -- queueing ---------------------------------------------------------------------------

    def put(self, data: Data, *, copies: int | None = None, storage_classes: Iterable[str] | None = None,
            ) -> Future[Locator]:
        """Queue `KeepClient.put` of *data*."""
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        future = self._client.put_async(data, copies=copies, storage_classes=storage_classes)
        return self._add("put", f"<{size} bytes>", future)

    def get(self, locator: LocatorLike) -> Future[bytes]:
        """Queue `KeepClient.get` of *locator*."""
        return self._add("get", str(locator), self._client.get_async(locator))

    def head(self, locator: LocatorLike) -> Future[bool]:
        """Queue `KeepClient.head` of *locator* (its outcome is True or `BlockNotFound`)."""
        return self._add("head", str(locator), self._client.head_async(locator))

    def _add(self, op: str, target: str, future: Future[T]) -> Future[T]:
        with self._lock:
            if self._closed:
                future.cancel()
                raise KeepError("this batch is finished; start a new one with kc.batch()")
            self._ops.append(_Op(len(self._ops), op, target, future))
        return future

    # -- collecting -------------------------------------------------------------------------

    def wait(self, raise_for_status: RaisePolicy | None = None) -> list[Outcome[Any]]:
        """Wait for every operation; return their outcomes in submission order.

        *raise_for_status* (default: the batch's own) decides which failures are raised:

        - ``"first"``: the first failure to happen is raised as soon as it happens, after the
          operations not yet started are cancelled (those already running finish in the
          background; leaving the ``with`` block waits for them).
        - ``"never"``: every failure is returned as an outcome.
        - a collection of exception classes (e.g. ``{BlockNotFound}``): failures of those
          classes are returned as outcomes; any other is raised as with ``"first"``.

        An operation you cancelled yourself (``future.cancel()``) is reported as cancelled,
        never raised.
        """
        policy = self.raise_for_status if raise_for_status is None else check_policy(raise_for_status)
        self._waited = True
        with self._lock:
            ops = list(self._ops)
        pending = {op.future for op in ops}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                pending.discard(future)
                if future.cancelled() or future.exception() is None:
                    continue
                error = future.exception()
                assert error is not None
                if not _acceptable(error, policy):
                    self._cancel_queued()
                    raise error
        return [self._outcome(op) for op in ops]

    @staticmethod
    def _outcome(op: _Op) -> Outcome[Any]:
        future = op.future
        if future.cancelled():
            return Outcome(op.index, op.op, op.target, error=CancelledError())
        error = future.exception()
        if error is not None:
            return Outcome(op.index, op.op, op.target, error=error)
        return Outcome(op.index, op.op, op.target, value=future.result())

    def _cancel_queued(self) -> None:
        with self._lock:
            for op in self._ops:
                if op.future.cancel():
                    op.cancelled_by_us = True

    def cancel(self) -> int:
        """Cancel the operations not yet started; return how many were cancelled."""
        self._cancel_queued()
        return sum(op.cancelled_by_us for op in self._ops)

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            self._closed = True
        if exc_type is not None:
            self._cancel_queued()
            wait([op.future for op in self._ops])
            return
        try:
            if not self._waited:
                self.wait()
        finally:
            # A failure raised by wait() may leave operations running: nothing outlives the block.
            wait([op.future for op in self._ops])

