"""KeepClient: replicated, verified, retrying reads and writes against Keep services."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .config import Retry, Settings, Timeout
from .errors import BlockNotFound, KeepError, NoServicesError, ReadError
from .local import LocalStore
from .locator import EMPTY_BLOCK, Locator, LocatorLike
from .services import Service, ServiceDirectory, ServiceLike, discover, parse_services, probe_order
from .store import BlockStore, Data, PutResult, as_view
from .transport import Headers, Request, Response, Transport, TransportError
from .writer import NOT_FOUND_STATUSES, TRANSIENT_STATUSES, write_block

__all__ = ["BlockCacheLike", "ClientStats", "KeepClient", "new_request_id"]

log = logging.getLogger(__name__)

_ID_ALPHABET = string.digits + string.ascii_lowercase


def new_request_id() -> str:
    """An Arvados-style request id: ``req-`` and 20 characters of ``[0-9a-z]``."""
    return "req-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


class BlockCacheLike(Protocol):
    """What `KeepClient(cache=...)` needs from a block cache.

    A cache that also has ``get_or_fetch(locator, fetch, verified=True)`` (keepstore's
    `BlockCache`) is used through it, so concurrent readers of a block share one download.
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
        transport: Transport | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        refresh_interval: float = 300.0,
    ) -> None:
        if copies < 1 or threads < 1:
            raise ValueError(f"copies and threads must be at least 1, got {copies} and {threads}")
        self._token = token
        self.timeout = Timeout.from_value(timeout)
        self.retry = Retry.from_value(retries)
        self.copies = copies
        self.storage_classes = tuple(storage_classes or ())
        self.threads = threads
        self.cache = cache
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
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._single_replica_roots: set[str] = set()
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> BlockStore:
        """A store configured from *environ* (default ``os.environ``) and the config file.

        Keyword arguments naming `Settings` fields override them (``config_path`` picks the
        file); any others go to the constructor (``transport=``, ``cache=``, ``sleep=``...).
        With nothing configured this is a `LocalStore`.
        """
        names = {f.name for f in dataclasses.fields(Settings)} - {"config_path"}
        config_path = overrides.pop("config_path", None)
        settings = Settings.from_env(environ, config_path, **{k: v for k, v in overrides.items() if k in names})
        extra = {k: v for k, v in overrides.items() if k not in names}
        if settings.mode == "local":
            return LocalStore(os.path.expanduser(settings.store_path))
        return cls(
            services=list(settings.services) if settings.services else None,
            api_host=settings.api_host, token=settings.token, timeout=settings.timeout,
            retries=settings.retries, copies=settings.copies, threads=settings.threads,
            insecure=settings.insecure, ca_file=settings.ca_file, **extra,
        )

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
        return write_block(self, view, loc, copies=wanted, classes=classes,
                           request_id=request_id or new_request_id())

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
        get_or_fetch = getattr(self.cache, "get_or_fetch", None)
        if get_or_fetch is not None:
            # keepstore's BlockCache: concurrent readers of one block share one download.
            fetched = []

            def fetch() -> bytes:
                fetched.append(True)
                return self._read(loc, "GET", rid)

            data: bytes = get_or_fetch(loc, fetch, verified=True)
            if not fetched:
                self._counters.add(cache_hits=1)
            return data
        cached = self.cache.get(loc)
        if cached is not None:
            self._counters.add(cache_hits=1)
            return cached
        data = self._read(loc, "GET", rid)
        self.cache.put(loc, data)
        return data

    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        """True when a service has the block; `BlockNotFound` when none has it."""
        self._check_open()
        loc = self._locator(locator)
        if str(loc.bare()) == EMPTY_BLOCK:
            return True
        self._read(loc, "HEAD", request_id or new_request_id())
        return True

    def _read(self, loc: Locator, method: str, request_id: str) -> bytes:
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
                result = self._read_once(service, loc, method, request_id, timeout)
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
            if all(s.root in retired for s in order) or retry.remaining <= 0:
                detail = "; ".join(f"{root}: {note}" for root, note in attempts.items())
                raise ReadError(f"[{request_id}] failed to read {loc} after {round_number + 1} round(s): {detail}",
                                locator=str(loc), request_id=request_id, attempts=attempts)
            retry = retry.increment(retry_after=retry_after)
            self._note_retry()
            retry.sleep(self._sleep)
            round_number += 1

    def _read_once(self, service: Service, loc: Locator, method: str, request_id: str,
                   timeout: Timeout) -> _Read:
        headers = self._headers(request_id)
        headers["Accept"] = "application/octet-stream"
        request = Request(method, service.root + str(loc), Headers(headers),
                          expected_size=loc.size if method == "GET" else None, timeout=timeout)
        try:
            response = self._send(service, request)
        except TransportError as exc:
            return _Read(note=exc.reason)
        status = response.status
        if status == 200:
            if method == "HEAD":
                return _Read(data=b"", status=200)
            return self._verify(service, loc, response)
        if status in TRANSIENT_STATUSES:
            return _Read(status=status, note=str(status), retry_after=response.retry_after())
        return _Read(status=status, note=str(status), permanent=True)

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
        """Finish writes in flight, stop the writer pool and close pooled connections."""
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.transport.close()

    def __enter__(self) -> "KeepClient":
        return self
