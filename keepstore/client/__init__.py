"""KeepClient: replicated, verified, retrying reads and writes against Keep services."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..batch import RAISE_FIRST, Batch, RaisePolicy
from ..cache import BlockCache, BlockCacheLike, as_block_cache
from ..config import Retry, Settings, Timeout
from ..errors import BlockNotFound, ConfigError, KeepError, NoServicesError
from ..local import LocalStore
from ..locator import EMPTY_BLOCK, Locator, LocatorLike
from ..services import Service, ServiceDirectory, ServiceLike, discover, parse_services
from ..store import BlockStore, Data, PutResult, as_view
from ..transport import Transport
from . import direct, stream
from .envcache import CacheChoice, cache_from_settings
from .health import HedgePolicy
from .prefetch import Prefetcher
from .putloop import PutLoop, QueuedPut
from .read import SIGNATURE_HEADER, read_block
from .rounds import RetryNotice, RoundPolicy
from .stats import ClientStats, Counters, ServiceStats
from .wire import Link, Wire, clean_token, new_request_id
from .write import CALLER_WRITES_MAX, BlockWrite, ReplicaMemory, write_block

__all__ = ["BlockCacheLike", "ClientStats", "HedgePolicy", "KeepClient", "RetryNotice", "ServiceStats",
           "new_request_id"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DISCOVERY_BODY_LIMIT = 16 << 20  # bytes a service-discovery answer may have (a list of services as JSON)


class KeepClient(BlockStore):
    """A client for Keep services with client-driven replication.

    See ``docs/client.md`` for retries, timeouts and placement, ``docs/cache.md`` for caches
    and ``docs/concurrency.md`` for futures, batches and prefetch.

    Args:
        services: `Service` objects, URLs, or one space-separated string of URLs. URLs get the
            Arvados synthetic uuids by position, as ``ARVADOS_KEEP_SERVICES`` does. Without
            them, *api_host* must name an Arvados API server to discover services from.
        token: The API token, sent as ``Authorization: Bearer``; surrounding whitespace is
            dropped. It never appears in a repr, log line or error.
        api_host: ``host[:port]`` (HTTPS) or an ``http(s)://`` URL of an Arvados API server
            whose ``keep_services/accessible`` list is used (and refreshed) when *services* is not given.
        timeout: A `Timeout`, a number of seconds (connect and read), or a
            ``(connect, read, min_bandwidth)`` tuple; default ``Timeout()``.
        retries: A `Retry` policy or a number of retry rounds (default 10).
        copies: Replicas each `put` stores unless told otherwise (default 2).
        storage_classes: Storage classes each `put` asks for unless told otherwise.
        threads: Size of each pool: replica PUTs in one put, whole operations (``*_async``,
            batches, the asyncio client), and small puts at once on the put loop.
        cache: A block cache for reads: a keepstore `BlockCache`, or any object with
            ``get(locator)`` and ``put(locator, data)`` (wrapped in a `ForeignCache`, whose
            hits are md5-checked and whose failures never fail a read).
        cache_writes: Also cache blocks this client puts.
        close_cache: Close *cache* when the client closes (``from_env`` sets it for a cache it made).
        prefetch_threads: Threads that fill the cache for `prefetch`.
        transport: The `Transport` to send requests with; default a `CurlTransport` of *insecure* and *ca_file*.
        insecure: Skip TLS certificate checks (warns); for the default transport only.
        ca_file: CA bundle to trust; for the default transport only.
        sleep: What waits between retry rounds (tests pass one that does not sleep); default a wait `cancel` ends.
        refresh_interval: Seconds between refreshes of a discovered service list.
        clock: Monotonic seconds for refreshes, retry deadlines, latencies and failure scores (tests pass theirs).
        cancel_event: An event that cancels every operation of this client once set (`cancel`
            sets it): transfers in flight abort, backoff waits end, and the operations raise
            `Cancelled`. Default a new one per client; ``keep`` shares one with its Ctrl-C handler.
        on_retry: Called with a `RetryNotice` each time an operation backs off to retry
            (``keep`` prints it); also logged at INFO on ``keepstore.client``.
        hedge: A `HedgePolicy` for hedged GETs and the order failed services are tried in (``docs/client.md``).

    Raises:
        ConfigError: *copies*, *threads* or *prefetch_threads* below 1, a token that cannot
            be a header, or an invalid timeout, retry policy or service.
        NoServicesError: neither *services* nor *api_host* given.
    """

    def __init__(
        self,
        services: ServiceLike | Iterable[ServiceLike] | None = None,
        *,
        token: str | None = None,
        api_host: str | None = None,
        timeout: Timeout | float | tuple[float, ...] | None = None,
        retries: Retry | int | None = None,
        copies: int = 2,
        storage_classes: Iterable[str] | None = None,
        threads: int = 8,
        cache: BlockCache | BlockCacheLike | None = None,
        cache_writes: bool = False,
        close_cache: bool = False,
        prefetch_threads: int = 2,
        transport: Transport | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        sleep: Callable[[float], Any] | None = None,
        refresh_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        cancel_event: threading.Event | None = None,
        on_retry: Callable[[RetryNotice], None] | None = None,
        hedge: HedgePolicy | None = None,
    ) -> None:
        if copies < 1 or threads < 1 or prefetch_threads < 1:
            raise ConfigError(f"copies, threads and prefetch_threads must be at least 1, got {copies}, {threads} "
                              f"and {prefetch_threads}")
        token = clean_token(token)
        self.timeout = Timeout.from_value(timeout)
        self.retry = Retry.from_value(retries)
        self.copies = copies
        self.storage_classes = tuple(storage_classes or ())
        self.threads = threads
        self.cache = cache  # a property: also sets the one cache path get() uses
        self.cache_writes = cache_writes
        self.close_cache = close_cache
        self.prefetch_threads = prefetch_threads
        self._sleep = sleep
        self._clock = clock
        self._cancel = cancel_event if cancel_event is not None else threading.Event()
        self._on_retry = on_retry
        if transport is None:
            from ..transport.curl import CurlTransport

            transport = CurlTransport(ca_file=ca_file, insecure=insecure, pool_size=max(threads * 2, 4))
        self.transport = transport
        self.api_host = api_host
        if services is not None:
            self._directory = ServiceDirectory(parse_services(services))
        elif api_host:
            self._directory = ServiceDirectory(discover_fn=self._discover, refresh_interval=refresh_interval,
                                               clock=clock)
        else:
            raise NoServicesError("KeepClient needs services= or api_host= (or use KeepClient.from_env())")
        self._counters = Counters()
        self._wire = Wire(transport, token, self._directory, self._counters, clock, self._cancel, hedge)
        self._replicas = ReplicaMemory()
        self._loop: PutLoop | None = PutLoop(self._wire, limit=threads)
        weakref.finalize(self, self._loop.close)  # a client dropped unclosed, or left at exit, ends its puts
        self._pool: ThreadPoolExecutor | None = None  # replica fan-out inside one put
        self._tasks: ThreadPoolExecutor | None = None  # whole operations: *_async, batches, aio
        self._prefetcher = Prefetcher(self.get, prefetch_threads)
        self._accepting = True
        self._pool_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> BlockStore:
        """A store configured from *environ* (default ``os.environ``) and the config file.

        Keyword arguments naming `Settings` fields override them (``config_path`` picks the
        file); any others go to the constructor (``transport=``, ``cache=``, ``sleep=``...).
        With nothing configured this is a `LocalStore`.

        A disk block cache is wired at ``cache_dir`` (``KEEP_CACHE_DIR`` or the config file)
        when that is set; ``cache=True`` asks for one at the default location too
        (``$XDG_CACHE_HOME/keepstore/blocks``), ``cache=False`` for none, and a cache object is
        used as given. A cache made here is closed with the client.
        """
        names = {f.name for f in dataclasses.fields(Settings)} - {"config_path"}
        config_path = overrides.pop("config_path", None)
        settings = Settings.from_env(environ, config_path, **{k: v for k, v in overrides.items() if k in names})
        extra = {k: v for k, v in overrides.items() if k not in names}
        if settings.mode == "local":
            return LocalStore(os.path.expanduser(settings.store_path))
        cache, owned = cache_from_settings(settings, environ, extra.pop("cache", CacheChoice.CONFIGURED))
        try:
            return cls(
                services=list(settings.services) if settings.services else None,
                api_host=settings.api_host, token=settings.token, timeout=settings.timeout,
                retries=Retry(total=settings.retries, deadline=settings.deadline), copies=settings.copies,
                threads=settings.threads, hedge=extra.pop("hedge", None) or HedgePolicy(enabled=settings.hedging),
                insecure=settings.insecure, ca_file=settings.ca_file, cache=cache,
                close_cache=owned or bool(extra.pop("close_cache", False)), **extra,
            )
        except BaseException:
            if owned and cache is not None:
                cache.close()
            raise

    def __repr__(self) -> str:
        where = " ".join(s.root for s in self.services) if self._directory.is_static else f"api_host={self.api_host}"
        return f"KeepClient({where!r}, copies={self.copies}, retries={self.retry.total})"

    @property
    def cache(self) -> BlockCache | BlockCacheLike | None:
        """The block cache as given (None: no cache)."""
        return self._cache

    @cache.setter
    def cache(self, cache: BlockCache | BlockCacheLike | None) -> None:
        self._cache = cache
        self._cache_front = as_block_cache(cache) if cache is not None else None  # a foreign one wrapped once

    @property
    def hedge_policy(self) -> HedgePolicy:
        """The `HedgePolicy` this client's GETs follow (``hedge=``, or from the settings)."""
        return self._wire.health.policy

    @property
    def services(self) -> list[Service]:
        """The services in configured (or discovered) order."""
        return list(self._directory.services())

    def stats(self) -> ClientStats:
        """Bytes up and down, requests, retry rounds, cache hits, per-service failures, and each
        service's requests, errors and latency (`ServiceStats`)."""
        return self._counters.snapshot()

    def cancel(self) -> None:
        """Cancel every operation of this client, now and from now on: transfers in flight abort,
        backoff waits end, and operations raise `Cancelled` (within about a second). For a
        Ctrl-C handler or a watchdog thread; `close` afterwards does not wait for stuck work."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called (or the shared cancel event set)."""
        return self._cancel.is_set()

    def _link(self) -> Link:
        """What a read or write needs of this client, with the policies as they are now."""
        rounds = RoundPolicy(self.retry, self._sleep, lambda: self._closed, lambda: self._counters.add(retries=1),
                             self.timeout, self._cancel, self._clock, self._on_retry or (lambda notice: None))
        return Link(self._wire, rounds, self.timeout)

    # -- writes ---------------------------------------------------------------------------

    def put(self, data: Data, *, copies: int | None = None, storage_classes: Iterable[str] | None = None,
            request_id: str | None = None) -> Locator:
        """Store *data* on *copies* replicas; return the (possibly signed) locator."""
        return self.put_block(data, copies=copies, storage_classes=storage_classes, request_id=request_id).locator

    def put_block(self, data: Data, *, copies: int | None = None, storage_classes: Iterable[str] | None = None,
                  request_id: str | None = None) -> PutResult:
        """Like `put`, and report replicas, confirming services and storage classes."""
        self._check_open()
        view = as_view(data)
        loc = Locator.for_data(view)
        wanted = self.copies if copies is None else copies
        if wanted < 1:
            return PutResult(loc, 0)
        classes = tuple(storage_classes) if storage_classes is not None else self.storage_classes
        result = write_block(self._link(), self._submit_replica, self._replicas, view, loc, copies=wanted,
                             classes=classes, request_id=request_id or new_request_id())
        self._stored(result, view)
        return result

    # -- reads ----------------------------------------------------------------------------

    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        """The block's bytes, verified against the locator's md5 and size."""
        return self._read(locator, request_id, "get_or_fetch", bytes)  # bytes(b) is b: no copy

    def get_view(self, locator: LocatorLike, *, request_id: str | None = None) -> memoryview:
        """`get` as a read-only `memoryview`; a `DiskBlockCache` hit maps the verified file, uncopied."""
        return self._read(locator, request_id, "get_or_fetch_view", memoryview)

    def _read(self, locator: LocatorLike, rid: str | None, lookup: str, wrap: Callable[[bytes], T]) -> T:
        self._check_open()
        loc = self._locator(locator)
        if loc.is_empty:
            return wrap(b"")
        rid, fetched = rid or new_request_id(), []

        def fetch() -> bytes:
            fetched.append(True)
            return read_block(self._link(), loc, "GET", rid)

        if self._cache_front is None:
            return wrap(fetch())
        data: T = getattr(self._cache_front, lookup)(loc, fetch, verified=True, origin=self)  # single-flight misses
        self._counters.add(cache_hits=0 if fetched else 1)
        return data

    def get_into(self, locator: LocatorLike, write: stream.Write, **options: Any) -> None:
        """`get`, the bytes handed to ``write(offset, piece)`` as they come; no cache (`stream.stream_block`)."""
        stream.stream_block(self._link(), self._locator(locator), write, **options)

    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """True when a service has the block; `BlockNotFound` when none has it."""
        self._check_open()
        loc = self._locator(locator)
        if str(loc.bare()) == EMPTY_BLOCK:
            return True
        read_block(self._link(), loc, "HEAD", request_id or new_request_id())
        return True

    def refresh_signature(self, locator: LocatorLike, *, request_id: str | None = None) -> Locator:
        """A locator signed by the cluster for this client's token, for *locator* (typically one
        with a ``+R`` remote signature, or an expiring ``+A`` one).

        Sends ``HEAD`` with ``X-Keep-Signature: local, <now, UTC>`` (as the Arvados SDK's
        ``refresh_signature`` does) and returns the ``X-Keep-Locator`` the service answers with.
        Real keepstore answers one only for ``+R`` locators: when a service accepts the HEAD
        without one, a locator whose ``+A`` signature has not expired is returned as it is
        (the SDK returns True there). `BlockNotFound` when no service has the block;
        `ReadError` when none gives a usable locator.
        """
        self._check_open()
        loc = self._locator(locator)
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = read_block(self._link(), loc, "HEAD", request_id or new_request_id(),
                          {SIGNATURE_HEADER: f"local, {stamp}"}, now=now)
        return Locator.parse(text.decode("ascii"))

    # -- one service at a time (keep check / keep repair; see docs/lifecycle.md) --------------

    def head_on(self, service: Service, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """One HEAD to *service*, no retries: True (has it), False (403/404/410); `ReadError`
        for another status, `TransportError` when it cannot be reached."""
        self._check_open()
        return direct.head_on(self._wire, service, self._locator(locator), self._one_request_timeout(),
                              request_id or new_request_id())

    def get_from(self, service: Service, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        """One GET from *service*, no retries: the bytes, verified (`ReadError` when damaged,
        `BlockNotFound` when it has none)."""
        self._check_open()
        return direct.get_from(self._wire, service, self._locator(locator), self._one_request_timeout(),
                               request_id or new_request_id())

    def put_to(self, service: Service, data: Data, *, request_id: str | None = None) -> Locator:
        """One PUT of *data* to *service* (one replica), no retries; the locator it answers
        (`WriteError` for a refusal, one naming another block, or no answer)."""
        self._check_open()
        return direct.put_to(self._wire, service, bytes(as_view(data)), self._one_request_timeout(),
                             request_id or new_request_id())

    def _one_request_timeout(self) -> Timeout:
        """The timeout of a one-service call: the retry deadline bounds its connect and stall times too."""
        return self.timeout if (limit := self.retry.deadline) is None else dataclasses.replace(
            self.timeout, connect=min(self.timeout.connect, limit), read=min(self.timeout.read, limit))

    # -- concurrency: futures, batches, fan-out (see docs/concurrency.md) -----------------

    def put_async(self, data: Data, *, copies: int | None = None, storage_classes: Iterable[str] | None = None,
                  request_id: str | None = None) -> Future[Locator]:
        """`put` in the background; a `Future` of the locator (see `put_block_async`)."""
        return self._put_later(data, copies, storage_classes, request_id, locator_only=True)

    def put_block_async(self, data: Data, *, copies: int | None = None,
                        storage_classes: Iterable[str] | None = None,
                        request_id: str | None = None) -> Future[PutResult]:
        """`put_block` in the background; a `Future` of the `PutResult`.

        A block up to 1 MiB goes to the put loop, whose one thread runs the first round of up to
        ``threads`` such puts on one curl multi handle (docs/concurrency.md); larger ones to the task pool.
        """
        return self._put_later(data, copies, storage_classes, request_id, locator_only=False)

    def _put_later(self, data: Data, copies: int | None, storage_classes: Iterable[str] | None,
                   request_id: str | None, *, locator_only: bool) -> Future[Any]:
        wanted = self.copies if copies is None else copies
        view = as_view(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        loop = self._loop  # (never from its own thread: a done-callback waiting there would wait for ever)
        small = view is not None and view.nbytes <= CALLER_WRITES_MAX and wanted >= 1
        if small and view is not None and loop is not None and not loop.in_loop():
            classes = tuple(storage_classes) if storage_classes is not None else self.storage_classes
            write = BlockWrite(self._link(), self._submit_replica, self._replicas, view, Locator.for_data(view),
                               wanted, classes, request_id or new_request_id())
            queued = QueuedPut(write, self._carry_on, self._stored, locator_only=locator_only)
            if loop.submit(queued):
                return queued.future
            self._loop = None  # the transport cannot overlap requests in one thread
        return self._submit(self.put if locator_only else self.put_block, data, copies=copies,
                            storage_classes=storage_classes, request_id=request_id)

    def _stored(self, result: PutResult, view: memoryview) -> None:
        """A put succeeded: write it through to the cache when asked to."""
        if self.cache_writes and self._cache_front is not None:
            self._cache_front.put(result.locator, view, verified=True)  # just hashed: it is the block

    def get_async(self, locator: LocatorLike, *, request_id: str | None = None) -> Future[bytes]:
        """`get` on the client's task pool; a `Future` of the verified bytes."""
        return self._submit(self.get, locator, request_id=request_id)

    def head_async(self, locator: LocatorLike, *, request_id: str | None = None) -> Future[bool]:
        """`head` on the client's task pool; a `Future` of True (or of `BlockNotFound`)."""
        return self._submit(self.head, locator, request_id=request_id)

    def batch(self, *, raise_for_status: RaisePolicy = RAISE_FIRST) -> Batch:
        """A `Batch`: queue puts, gets and heads that run in parallel, then ``wait()`` for all."""
        self._check_open()
        return Batch(self, raise_for_status)

    def get_many(self, locators: Iterable[LocatorLike]) -> list[bytes]:
        """The blocks' bytes, in the order asked, fetched in parallel; the first failure is raised."""
        with self.batch() as batch:
            for locator in locators:
                batch.get(locator)
            return [outcome.result() for outcome in batch.wait()]

    def exists_many(self, locators: Iterable[LocatorLike]) -> list[bool]:
        """Whether each block is stored, in the order asked, checked in parallel.

        A block no service has is False; other failures (no service answering) are raised.
        """
        with self.batch(raise_for_status={BlockNotFound}) as batch:
            for locator in locators:
                batch.head(locator)
            return [outcome.ok for outcome in batch.wait()]

    def prefetch(self, locators: Iterable[LocatorLike]) -> list[Future[None]]:
        """Start fetching blocks into ``kc.cache`` in the background; return at once.

        Does nothing without a cache. Blocks already queued are skipped, and so are blocks
        beyond 256 waiting ones (prefetch is a hint). Failures are logged,
        never raised; the returned futures (one per block queued) complete either way (those still
        queued when the client closes are cancelled).
        """
        if self._cache_front is None:
            return []
        return self._prefetcher.queue([self._locator(locator) for locator in locators])

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on the task pool (bounded by ``threads``).

        Whole operations get their own pool so that queued operations can never occupy every
        thread of the replica pool their own puts need.
        """
        with self._pool_lock:
            if not self._accepting:
                raise KeepError("this KeepClient is closed")
            if self._tasks is None:
                self._tasks = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="keepstore-task")
            return self._tasks.submit(fn, *args, **kwargs)

    def _submit_replica(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run one replica PUT of a put on the replica pool."""
        with self._pool_lock:
            self._check_open()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="keepstore-put")
            return self._pool.submit(fn, *args)

    def _carry_on(self, fn: Callable[[], None]) -> Future[None]:
        """Run the rest of a put the loop began on the task pool (also while closing: `close`
        waits for the loop first). RuntimeError once the pool is shut down."""
        with self._pool_lock:
            if self._closed:
                raise RuntimeError("the task pool is shut down")
            if self._tasks is None:
                self._tasks = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="keepstore-task")
            return self._tasks.submit(fn)

    def _discover(self) -> list[Service]:
        assert self.api_host is not None
        services = discover(self.api_host, direct.discovery_fetch(self._wire, self.timeout, DISCOVERY_BODY_LIMIT))
        log.debug("discovered %d Keep services", len(services))
        return services

    def _check_open(self) -> None:
        if self._closed:
            raise KeepError("this KeepClient is closed")

    def close(self) -> None:
        """Finish queued and running operations, drop queued prefetches, stop the pools and
        close pooled connections (and the cache, with ``close_cache``).

        After `cancel`, queued work is dropped and nothing is waited for: threads still in a
        transfer end on their own once it aborts.
        """
        with self._pool_lock:
            if not self._accepting:
                return
            self._accepting = False  # no new work; what is queued still runs
        if self._loop is not None:
            self._loop.close()  # (its puts not done in one round go on on the task pool)
        with self._pool_lock:
            tasks = self._tasks
        wait = not self._cancel.is_set()
        self._prefetcher.close(wait)
        if tasks is not None:
            tasks.shutdown(wait=wait, cancel_futures=not wait)
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=not wait)
        self.transport.close()
        if self.close_cache and self._cache_front is not None:
            self._cache_front.close()

    def __enter__(self) -> "KeepClient":
        return self
