"""The `BlockStore` interface that LocalStore and KeepClient both implement."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Union

from .errors import BlockNotFound, LocatorError
from .locator import Locator, LocatorLike

__all__ = ["BlockStore", "Data", "PutResult", "as_view"]

Data = Union[bytes, bytearray, memoryview, str]


def as_view(data: Data) -> memoryview:
    """A byte view of *data* without copying (``str`` is encoded as UTF-8)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"put() takes bytes, bytearray, memoryview or str, not {type(data).__name__}")
    view = memoryview(data)
    if not view.contiguous:
        raise ValueError("put() needs a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


@dataclasses.dataclass(frozen=True)
class PutResult:
    """What one block write achieved: the locator, replicas counted, and who confirmed them.

    Args:
        locator: The stored block's locator (signed when a service signed it).
        replicas: Replicas confirmed.
        services: The roots of the services that confirmed a replica, in order.
        storage_classes: Replicas confirmed per storage class.
    """

    locator: Locator
    replicas: int
    services: tuple[str, ...] = ()
    storage_classes: Mapping[str, int] = dataclasses.field(default_factory=dict)


class BlockStore(abc.ABC):
    """A content-addressed store of blocks of at most 64 MiB, named by `Locator`."""

    @abc.abstractmethod
    def put(
        self,
        data: Data,
        *,
        copies: int | None = None,
        storage_classes: Iterable[str] | None = None,
        request_id: str | None = None,
    ) -> Locator:
        """Store *data* as one block and return its locator."""

    def put_block(
        self,
        data: Data,
        *,
        copies: int | None = None,
        storage_classes: Iterable[str] | None = None,
        request_id: str | None = None,
    ) -> PutResult:
        """Like `put`, but also report replicas and the services that confirmed them."""
        loc = self.put(data, copies=copies, storage_classes=storage_classes, request_id=request_id)
        return PutResult(loc, 1, (str(self),))

    @abc.abstractmethod
    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        """Return the block's bytes, verified against the locator's md5 and size."""

    def get_view(self, locator: LocatorLike, *, request_id: str | None = None) -> memoryview:
        """The block as a read-only `memoryview`, verified as `get` verifies (here: a view of its bytes)."""
        return memoryview(self.get(locator, request_id=request_id))

    @abc.abstractmethod
    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """Return True when the block is stored; raise `BlockNotFound` when it is not."""

    def exists(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """True when the block is stored, False when it is not (other failures still raise)."""
        try:
            return self.head(locator, request_id=request_id)
        except BlockNotFound:
            return False

    def close(self) -> None:  # noqa: B027 - optional hook: stores holding nothing need not override it
        """Release resources; the store is not usable afterwards."""

    def __enter__(self) -> "BlockStore":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _locator(value: LocatorLike) -> Locator:
        if isinstance(value, Locator):
            return value
        if isinstance(value, str):
            return Locator.parse(value)
        raise LocatorError(f"expected a Locator or locator text, got {type(value).__name__}")
