"""AsyncKeepClient: awaitable put/get/head/exists over a KeepClient's task pool, never blocking the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from .client import KeepClient
from .errors import BlockNotFound, NoServicesError
from .locator import Locator, LocatorLike
from .store import Data, PutResult

__all__ = ["AsyncKeepClient"]

T = TypeVar("T")


class AsyncKeepClient:
    """The asyncio face of a `KeepClient`.

    Each call hands the blocking `KeepClient` method to the client's bounded task pool and
    awaits its future, so retries, placement, verification and the cache are the sync
    client's own, and the event loop never waits on the network. It needs no loop of its own:
    it works inside one already running (Jupyter, ``asyncio.run``, a loop in another thread).

    Wrap an existing client (``AsyncKeepClient(kc)``; closing this one then leaves *kc* open)
    or pass `KeepClient` arguments to make one it owns (``AsyncKeepClient(services=[...])``).
    Cancelling an awaiting task cancels the operation if it has not started yet.

    Args:
        client: The `KeepClient` to wrap; None to make one from *options*.
        close_client: Whether `close` closes the `KeepClient`; default: only one made here.
        **options: `KeepClient` arguments, when *client* is None.

    Raises:
        TypeError: both *client* and *options* given.
    """

    def __init__(self, client: KeepClient | None = None, *, close_client: bool | None = None,
                 **options: Any) -> None:
        if client is not None and options:
            raise TypeError("pass either a KeepClient or KeepClient arguments, not both")
        self.close_client = client is None if close_client is None else close_client
        self.client = client if client is not None else KeepClient(**options)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "AsyncKeepClient":
        """An async client over `KeepClient.from_env` (which must configure Keep services:
        `NoServicesError` when it gives the local-store default)."""
        store = KeepClient.from_env(environ, **overrides)
        if not isinstance(store, KeepClient):
            store.close()
            raise NoServicesError(f"AsyncKeepClient needs Keep services (KEEP_SERVICES, ARVADOS_API_HOST or "
                                  f"services=); the configuration gives {store!r}")
        return cls(store, close_client=True)

    def __repr__(self) -> str:
        return f"AsyncKeepClient({self.client!r})"

    async def put(self, data: Data, *, copies: int | None = None, storage_classes: Iterable[str] | None = None,
                  request_id: str | None = None) -> Locator:
        """Store *data*; the (possibly signed) locator. See `KeepClient.put`."""
        return await _awaitable(self.client.put_async(data, copies=copies, storage_classes=storage_classes,
                                                      request_id=request_id))

    async def put_block(self, data: Data, *, copies: int | None = None,
                        storage_classes: Iterable[str] | None = None, request_id: str | None = None) -> PutResult:
        """Like `put`, with replicas and confirming services. See `KeepClient.put_block`."""
        return await _awaitable(self.client.put_block_async(data, copies=copies, storage_classes=storage_classes,
                                                            request_id=request_id))

    async def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        """The block's verified bytes. See `KeepClient.get`."""
        return await _awaitable(self.client.get_async(locator, request_id=request_id))

    async def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """True when stored; raises `BlockNotFound` when not. See `KeepClient.head`."""
        return await _awaitable(self.client.head_async(locator, request_id=request_id))

    async def exists(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """True when stored, False when not (other failures raise)."""
        try:
            return await self.head(locator, request_id=request_id)
        except BlockNotFound:
            return False

    async def close(self) -> None:
        """Close the wrapped client if this object made it (waits for its queued work off the loop)."""
        if self.close_client:
            # Not on the client's own pool: close() waits for that pool to finish.
            await asyncio.get_running_loop().run_in_executor(None, self.client.close)

    async def __aenter__(self) -> "AsyncKeepClient":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _awaitable(future: Future[T]) -> asyncio.Future[T]:
    """*future* as an awaitable of the running loop (cancelling it cancels *future* if queued)."""
    return asyncio.wrap_future(future, loop=asyncio.get_running_loop())
