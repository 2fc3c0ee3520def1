"""Shaping: what a scripted `Fault` does to one response of `keep serve` (before it, or to its body)."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator

from .faults import Fault, FaultKind

__all__ = ["Before", "before", "shape_body"]

Sleep = Callable[[float], None]


class Before(enum.Enum):
    """What the handler does once a fault has acted before the normal handling."""

    PROCEED = "proceed"  # handle the request normally (the body may still be shaped)
    ANSWER = "answer"  # answer with the fault's status instead
    DROP = "drop"  # close the connection without an answer


def before(fault: Fault, method: str, sleep: Sleep = time.sleep) -> Before:
    """Apply the part of *fault* that acts before the request is handled."""
    if fault.kind is FaultKind.DELAY:
        sleep(fault.value)
    elif fault.kind is FaultKind.DROP:
        return Before.DROP
    elif fault.kind is FaultKind.STATUS:
        return Before.ANSWER
    elif fault.kind is FaultKind.STALL and method in ("HEAD", "PUT"):  # a GET stalls after its headers
        sleep(fault.value)
    elif fault.kind is FaultKind.HOLD and fault.gate is not None:
        fault.gate.pass_through(fault.value or None)
    return Before.PROCEED


def shape_body(fault: Fault | None, pieces: Iterable[bytes], size: int,
               sleep: Sleep = time.sleep) -> Iterator[bytes]:
    """The pieces of a *size*-byte GET body as *fault* wants them sent (unchanged without one).

    ``stall`` waits before the first byte, ``throttle`` paces the bytes, ``corrupt`` flips the
    middle byte, ``truncate`` ends after half the body (the handler then closes the connection).
    """
    if fault is None:
        yield from pieces
        return
    kind = fault.kind
    if kind is FaultKind.STALL:
        sleep(fault.value)
    limit = size // 2 if kind is FaultKind.TRUNCATE else size
    offset = sent = 0
    for piece in pieces:
        if kind is FaultKind.CORRUPT and offset <= size // 2 < offset + len(piece):
            i = size // 2 - offset
            piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1:]
        offset += len(piece)
        piece = piece[:max(limit - sent, 0)]
        if kind is FaultKind.THROTTLE:
            step = max(1, int(fault.value / 20))
            for i in range(0, len(piece), step):
                yield piece[i:i + step]
                sleep(len(piece[i:i + step]) / fault.value)
        elif piece:
            yield piece
        sent += len(piece)
        if sent >= limit:
            return
