"""KeepClient: replicated, verified, retrying reads and writes against Keep services."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from .batch import RAISE_FIRST, Batch, RaisePolicy
from .cache import BlockCache
from .config import Retry, Settings, Timeout
from .errors import BlockNotFound, ConfigError, KeepError, LocatorError, NoServicesError, ReadError
from .local import LocalStore
from .locator import EMPTY_BLOCK, Locator, LocatorLike
from .services import Service, ServiceDirectory, ServiceLike, discover, parse_services, probe_order
from .store import BlockStore, Data, PutResult, as_view
from .transport import Headers, Request, Response, Transport, TransportError
from .writer import NOT_FOUND_STATUSES, TRANSIENT_STATUSES, write_block

__all__ = ["BlockCacheLike", "ClientStats", "KeepClient", "new_request_id"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Blocks waiting for prefetch at once; more are dropped (prefetch is a hint, not a queue).
MAX_PREFETCH_PENDING = 256

_ID_ALPHABET = string.digits + string.ascii_lowercase


def _clean_token(token: str | None) -> str | None:
    """*token* without surrounding whitespace (a secret file's newline); `ConfigError` when what
    is left could not be sent as one header value. The message never shows the token."""
    if token is None:
        return None
    token = token.strip()
    if not token:
        return None
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        # A line break would end the request's headers early (and could inject new ones).
        raise ConfigError("the Keep token has a space, line break, control or non-ASCII character in it")
    return token


def new_request_id() -> str:
    """An Arvados-style request id: ``req-`` and 20 characters of ``[0-9a-z]``."""
    # One draw of 20 base-36 digits: uniform like 20 secrets.choice calls, at one urandom call
    # instead of twenty (60 -> 8 us an id, docs/performance.md).
    n = secrets.randbelow(36**20)
    digits = []
    for _ in range(20):
        n, d = divmod(n, 36)
        digits.append(_ID_ALPHABET[d])
    return "req-" + "".join(digits)


class BlockCacheLike(Protocol):
    """What `KeepClient(cache=...)` needs from a block cache.

    A keepstore `BlockCache` is used through its ``get_or_fetch``, so concurrent readers of a
    block share one download; any other cache's hits are checked by size and md5.
    """

    def get(self, locator: Locator) -> bytes | None: ...

    def put(self, locator: Locator, data: bytes) -> None: ...


@dataclasses.dataclass(frozen=True)
class ClientStats:
    """A snapshot of a client's traffic since it was created."""

    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: Mapping[str, int] = dataclasses.field(default_factory=dict)


class _Counters:
    """Thread-safe mutable counters behind `ClientStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict(bytes_up=0, bytes_down=0, requests=0, retries=0, cache_hits=0)
        self._failures: dict[str, int] = {}

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def fail(self, root: str) -> None:
        with self._lock:
            self._failures[root] = self._failures.get(root, 0) + 1

    def snapshot(self) -> ClientStats:
        with self._lock:
            return ClientStats(failures=dict(self._failures), **self._values)


@dataclasses.dataclass(frozen=True)
class _Read:
    """What one GET or HEAD to one service gave."""

    data: bytes | None = None  # set on success (b"" for HEAD)
    status: int | None = None
    note: str = ""
    permanent: bool = False
    retry_after: float | None = None


class KeepClient(BlockStore):
    """A client for Keep services with client-driven replication.

    *services* are `Service` objects, URLs, or one space-separated string of URLs; without
    them, *api_host* names an Arvados API server to discover services from. See
    ``docs/client.md`` for retries, timeouts and placement.
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
        cache: BlockCacheLike | None = None,
        cache_writes: bool = False,
        prefetch_threads: int = 2,
        transport: Transport | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        refresh_interval: float = 300.0,
    ) -> None:
        if copies < 1 or threads < 1 or prefetch_threads < 1:
            raise ConfigError(f"copies, threads and prefetch_threads must be at least 1, "
                             f"got {copies}, {threads} and {prefetch_threads}")
        self._token = _clean_token(token)
        self.timeout = Timeout.from_value(timeout)
        self.retry = Retry.from_value(retries)
        self.copies = copies
        self.storage_classes = tuple(storage_classes or ())
        self.threads = threads
        self.cache = cache
        self.cache_writes = cache_writes
        self.prefetch_threads = prefetch_threads
        self._owns_cache = False
        self._cache_warned = False
        self._sleep = sleep
        if transport is None:
            from .transport.curl import CurlTransport

            transport = CurlTransport(ca_file=ca_file, insecure=insecure, pool_size=max(threads * 2, 4))
        self.transport = transport
        self.api_host = api_host
        if services is not None:
            self._directory = ServiceDirectory(parse_services(services))
        elif api_host:
            self._directory = ServiceDirectory(discover_fn=self._discover, refresh_interval=refresh_interval)
        else:
            raise NoServicesError("KeepClient needs services= or api_host= (or use KeepClient.from_env())")
        self._counters = _Counters()
        self._pool: ThreadPoolExecutor | None = None  # replica fan-out inside one put
        self._tasks: ThreadPoolExecutor | None = None  # whole operations: *_async, batches, aio
        self._prefetcher: ThreadPoolExecutor | None = None
        self._prefetching: set[str] = set()
        self._accepting = True
        self._pool_lock = threading.Lock()
        self._single_replica_roots: set[str] = set()
        self._url_list_single_replica = False
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
        cache, owned = _cache_from_settings(settings, environ, extra.pop("cache") if "cache" in extra else "configured")
        try:
            client = cls(
                services=list(settings.services) if settings.services else None,
                api_host=settings.api_host, token=settings.token, timeout=settings.timeout,
                retries=settings.retries, copies=settings.copies, threads=settings.threads,
                insecure=settings.insecure, ca_file=settings.ca_file, cache=cache, **extra,
            )
        except BaseException:
            if owned and cache is not None:
                cache.close()  # type: ignore[attr-defined]  # ours: a BlockCache
            raise
        client._owns_cache = owned
        return client

    def __repr__(self) -> str:
        where = " ".join(s.root for s in self._directory.services()) if self._directory.is_static else (
            f"api_host={self.api_host}")
        return f"KeepClient({where!r}, copies={self.copies}, retries={self.retry.total})"

    @property
    def services(self) -> list[Service]:
        """The services in configured (or discovered) order."""
        return list(self._directory.services())

    def stats(self) -> ClientStats:
        """Bytes up and down, requests, retry rounds, cache hits and per-service failures."""
        return self._counters.snapshot()

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
        result = write_block(self, view, loc, copies=wanted, classes=classes,
                             request_id=request_id or new_request_id())
        if self.cache_writes and self.cache is not None:
            self._cache_put(loc, view)
        return result

    # -- reads ----------------------------------------------------------------------------

    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        """The block's bytes, verified against the locator's md5 and size."""
        self._check_open()
        loc = self._locator(locator)
        if str(loc.bare()) == EMPTY_BLOCK:
            return b""
        rid = request_id or new_request_id()
        if self.cache is None:
            return self._read(loc, "GET", rid)
        if isinstance(self.cache, BlockCache):
            # keepstore's BlockCache: concurrent readers of one block share one download.
            fetched = []

            def fetch() -> bytes:
                fetched.append(True)
                return self._read(loc, "GET", rid)

            data = self.cache.get_or_fetch(loc, fetch, verified=True, origin=self)
            if not fetched:
                self._counters.add(cache_hits=1)
            return data
        cached = self._cache_get(loc)
        if cached is not None:
            self._counters.add(cache_hits=1)
            return cached
        data = self._read(loc, "GET", rid)
        self._cache_put(loc, memoryview(data))
        return data

    # A cache is an optimisation: its failures must never fail a read or write the network
    # served. keepstore's own caches swallow their failures; these guards are for other
    # cache objects, whose exception types we cannot know (hence the broad catch).

    def _cache_get(self, loc: Locator) -> bytes | None:
        """A hit from a cache that is not a keepstore `BlockCache`, checked like a network read."""
        assert self.cache is not None
        try:
            data = self.cache.get(loc)
        except Exception as exc:  # see above
            self._cache_failed(exc, "reading")
            return None
        if data is None:
            return None
        if len(data) != loc.size or hashlib.md5(data).hexdigest() != loc.md5:
            log.warning("block cache %r returned wrong bytes for %s; reading from the network", self.cache,
                        loc.bare())
            return None
        return bytes(data)

    def _cache_put(self, loc: Locator, view: memoryview) -> None:
        assert self.cache is not None
        try:
            put = self.cache.put
            if isinstance(self.cache, BlockCache):  # the data is already verified
                put(loc, view, verified=True)  # type: ignore[call-arg, arg-type]
            else:
                put(loc, bytes(view))
        except Exception as exc:  # see above
            self._cache_failed(exc, "storing")

    def _cache_failed(self, exc: Exception, action: str) -> None:
        first, self._cache_warned = not self._cache_warned, True
        (log.warning if first else log.debug)("block cache %r failed while %s (%s: %s); carrying on without it",
                                              self.cache, action, type(exc).__name__, exc)

    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """True when a service has the block; `BlockNotFound` when none has it."""
        self._check_open()
        loc = self._locator(locator)
        if str(loc.bare()) == EMPTY_BLOCK:
            return True
        self._read(loc, "HEAD", request_id or new_request_id())
        return True

    def refresh_signature(self, locator: LocatorLike, *, request_id: str | None = None) -> Locator:
        """A locator signed by the cluster for this client's token, for *locator* (typically one
        with a ``+R`` remote signature, or an expiring ``+A`` one).

        Sends ``HEAD`` with ``X-Keep-Signature: local, <now, UTC>`` (as the Arvados SDK's
        ``refresh_signature`` does) and returns the ``X-Keep-Locator`` the service answers with.
        `BlockNotFound` when no service has the block; `ReadError` when none gives a locator.
        """
        self._check_open()
        loc = self._locator(locator)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = self._read(loc, "HEAD", request_id or new_request_id(), {"X-Keep-Signature": f"local, {now}"})
        return Locator.parse(text.decode("ascii"))

    # -- concurrency: futures, batches, fan-out (see docs/concurrency.md) -----------------

    def put_async(self, data: Data, *, copies: int | None = None, storage_classes: Iterable[str] | None = None,
                  request_id: str | None = None) -> Future[Locator]:
        """`put` on the client's task pool; a `Future` of the locator."""
        return self._submit(self.put, data, copies=copies, storage_classes=storage_classes, request_id=request_id)

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
        beyond `MAX_PREFETCH_PENDING` waiting ones (prefetch is a hint). Failures are logged,
        never raised; the returned futures (one per block queued) complete either way (those still
        queued when the client closes are cancelled).
        """
        if self.cache is None:
            return []
        queued: list[Future[None]] = []
        for locator in locators:
            loc = self._locator(locator)
            key = str(loc.bare())
            with self._pool_lock:
                if not self._accepting or key in self._prefetching or key == EMPTY_BLOCK:
                    continue
                if len(self._prefetching) >= MAX_PREFETCH_PENDING:
                    log.debug("prefetch queue full; not prefetching %s", key)
                    continue
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(max_workers=self.prefetch_threads,
                                                          thread_name_prefix="keepstore-prefetch")
                self._prefetching.add(key)
                queued.append(self._prefetcher.submit(self._prefetch_one, loc, key))
        return queued

    def _prefetch_one(self, loc: Locator, key: str) -> None:
        try:
            self.get(loc)
        except BlockNotFound as exc:
            log.debug("prefetch of %s: %s", key, exc)
        except Exception:  # nobody waits on a prefetch: say what went wrong, don't lose it
            log.warning("prefetch of %s failed", key, exc_info=True)
        finally:
            with self._pool_lock:
                self._prefetching.discard(key)

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

    def _read(self, loc: Locator, method: str, request_id: str, extra: Mapping[str, str] | None = None) -> bytes:
        """GET: the verified block. HEAD: b"", or with *extra* ``X-Keep-Signature`` the
        ``X-Keep-Locator`` answered (checked to name the same block)."""
        retry = self.retry
        retired: set[str] = set()
        last: dict[str, _Read] = {}
        round_number = 0
        while True:
            order = probe_order(loc, self._directory.services())
            if not order:
                raise NoServicesError(f"[{request_id}] no Keep services to read {loc} from")
            timeout = self.timeout.for_round(round_number)
            retry_after: float | None = None
            for service in order:
                if service.root in retired:
                    continue
                result = self._read_once(service, loc, method, request_id, timeout, extra)
                if result.data is not None:
                    return result.data
                last[service.root] = result
                if result.permanent:
                    retired.add(service.root)
                if result.retry_after is not None:
                    retry_after = max(retry_after or 0.0, result.retry_after)
            attempts = {root: r.note for root, r in last.items()}
            if all(last.get(s.root, _Read()).status in NOT_FOUND_STATUSES for s in order):
                raise BlockNotFound(f"[{request_id}] {loc} not found on {len(order)} service(s)",
                                    locator=str(loc), request_id=request_id, attempts=attempts)
            if all(s.root in retired for s in order) or retry.remaining <= 0 or self._closed:
                detail = "; ".join(f"{root}: {note}" for root, note in attempts.items())
                why = "(the client was closed)" if self._closed else f"after {round_number + 1} round(s)"
                raise ReadError(f"[{request_id}] failed to read {loc} {why}: {detail}",
                                locator=str(loc), request_id=request_id, attempts=attempts)
            retry = retry.increment(retry_after=retry_after)
            self._note_retry()
            retry.sleep(self._sleep)
            round_number += 1

    def _read_once(self, service: Service, loc: Locator, method: str, request_id: str,
                   timeout: Timeout, extra: Mapping[str, str] | None = None) -> _Read:
        headers = self._headers(request_id)
        headers["Accept"] = "application/octet-stream"
        headers.update(extra or {})
        request = Request(method, service.root + str(loc), Headers(headers),
                          expected_size=loc.size if method == "GET" else None, timeout=timeout)
        try:
            response = self._send(service, request)
        except TransportError as exc:
            return _Read(note=exc.reason)
        status = response.status
        if status == 200:
            if method == "HEAD":
                if extra and "X-Keep-Signature" in extra:
                    return self._returned_locator(loc, response)
                return _Read(data=b"", status=200)
            return self._verify(service, loc, response)
        if status in TRANSIENT_STATUSES:
            return _Read(status=status, note=str(status), retry_after=response.retry_after())
        return _Read(status=status, note=str(status), permanent=True)

    @staticmethod
    def _returned_locator(loc: Locator, response: Response) -> _Read:
        """The ``X-Keep-Locator`` of a refreshing HEAD, if it names the block asked about."""
        text = (response.headers.get("X-Keep-Locator") or "").strip()
        try:
            returned = Locator.parse(text)
        except LocatorError:
            return _Read(status=200, note="200 without a valid X-Keep-Locator", permanent=True)
        if returned.md5 != loc.md5 or returned.size != loc.size:
            return _Read(status=200, note=f"200 with X-Keep-Locator for another block ({returned.bare()})",
                         permanent=True)
        return _Read(data=str(returned).encode("ascii"), status=200)

    def _verify(self, service: Service, loc: Locator, response: Response) -> _Read:
        body = response.body
        if len(body) != loc.size:
            self._counters.fail(service.root)
            return _Read(status=200, note=f"200 with {len(body)} of {loc.size} bytes")
        digest = response.body_md5 or hashlib.md5(body).hexdigest()
        if digest != loc.md5:
            self._counters.fail(service.root)
            log.warning("checksum mismatch reading %s from %s", loc.bare(), service.root)
            return _Read(status=200, note="200 with a checksum mismatch")
        return _Read(data=bytes(body), status=200)

    # -- plumbing shared with the writer --------------------------------------------------

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"X-Request-Id": request_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _send(self, service: Service, request: Request) -> Response:
        """Send one request, counting traffic; connection failures mark the service list stale."""
        self._counters.add(requests=1, bytes_up=request.body.nbytes if request.body is not None else 0)
        try:
            response = self.transport.request(request)
        except TransportError as exc:
            self._counters.fail(service.root)
            if exc.connect:
                self._directory.mark_stale()
            log.debug("%s %s: %s", request.method, service.root, exc.reason)
            raise
        self._counters.add(bytes_down=len(response.body))
        if response.status != 200 and response.status not in NOT_FOUND_STATUSES:
            self._counters.fail(service.root)
        log.debug("%s %s -> %s", request.method, service.root, response.status)
        return response

    def _note_retry(self) -> None:
        self._counters.add(retries=1)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            self._check_open()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="keepstore-put")
            return self._pool

    def _discover(self) -> list[Service]:
        assert self.api_host is not None

        def fetch(url: str) -> tuple[int, bytes]:
            headers = self._headers(new_request_id())
            headers["Accept"] = "application/json"
            try:
                response = self.transport.request(Request("GET", url, Headers(headers), timeout=self.timeout))
            except TransportError as exc:
                raise NoServicesError(f"Keep service discovery failed: {exc}") from exc
            return response.status, response.body

        services = discover(self.api_host, fetch)
        log.debug("discovered %d Keep services", len(services))
        return services

    def _check_open(self) -> None:
        if self._closed:
            raise KeepError("this KeepClient is closed")

    def close(self) -> None:
        """Finish queued and running operations, drop queued prefetches, stop the pools and
        close pooled connections (and a cache `from_env` made)."""
        with self._pool_lock:
            if not self._accepting:
                return
            self._accepting = False  # no new work; what is queued still runs
            tasks, prefetcher = self._tasks, self._prefetcher
        if prefetcher is not None:
            prefetcher.shutdown(wait=True, cancel_futures=True)
        if tasks is not None:
            tasks.shutdown(wait=True)
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.transport.close()
        if self._owns_cache and self.cache is not None:
            self.cache.close()  # type: ignore[attr-defined]  # ours: a BlockCache

    def __enter__(self) -> "KeepClient":
        return self


def _cache_from_settings(settings: Settings, environ: Mapping[str, str] | None,
                         choice: Any) -> tuple[BlockCacheLike | None, bool]:
    """The cache `KeepClient.from_env` uses for *choice*, and whether the client owns it."""
    if choice is None or choice is False:
        return None, False
    if choice is True or (choice == "configured" and settings.cache_dir):
        from .cache import DiskBlockCache

        path = os.path.expanduser(settings.default_cache_dir(environ))
        return DiskBlockCache(path, settings.cache_max_bytes), True
    if choice == "configured":
        return None, False
    return choice, False
