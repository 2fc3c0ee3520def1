"""KeepServer: the Keep block protocol over HTTP/1.1 for one machine, with fault injection."""

from __future__ import annotations

import collections
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..locator import DEFAULT_SIGNING_TTL
from .admission import Admission, default_max_connections
from .auth import Permissions
from .background import Periodic
from .blocks import Blocks, Found
from .connection import KeepHTTPServer
from .context import MIN_BODY_RATE, Context
from .exchange import RequestRecord
from .faults import FaultPlan
from .handler import KeepHandler
from .metrics import ServerMetrics
from .scrub import Scrubber, ScrubReport
from .trash import DEFAULT_TRASH_LIFETIME, TrashPolicy
from .volumes import Volume, parse_volume

__all__ = ["KeepServer", "RequestRecord"]

log = logging.getLogger("keepstore.server")


class KeepServer:
    """A Keep-protocol server on *host*:*port* storing blocks in *volumes*.

    ``port=0`` picks a free port (see `url` after `start()`). `stop()` finishes requests in
    flight (up to *grace* seconds), closes idle keep-alive connections and frees the port;
    `start()` again listens on the same port. `faults` scripts misbehaviour for tests and
    `requests` records what was asked. See ``docs/server.md``.

    Args:
        volumes: block directories (`Volume`, ``"DIR[:class,...]"`` text, or a path), or one.
        host: the address to listen on.
        port: the port (0: a free one, known after `start()`).
        signing_key: the blob signing key; PUT answers are then signed for the caller's token.
        signing_ttl: lifetime of signatures, in seconds.
        require_signatures: refuse GET/HEAD without a valid ``+A`` for the token sent.
        system_token: the token that may read ``/index``, ``DELETE`` blocks and untrash them.
        max_requests: requests in flight at most; beyond, 503 with ``Retry-After: 1``.
        idle_timeout: seconds a connection may sit idle, or a request stall, before it is closed.
        min_rate: bytes/s that request and response bodies must average after one idle timeout.
        max_connections: open connections at most (default: from the open-file limit); beyond,
            the longest-idle one is closed.
        first_byte_timeout: seconds a new connection may take to start its first request
            (at most *idle_timeout*).
        tls_cert: PEM certificate chain for HTTPS (with *tls_key*).
        tls_key: PEM private key for *tls_cert*.
        fsync: fsync block files and directories on write (off: faster, not power-cut safe),
            for volumes given as paths; a `Volume` keeps its own ``fsync``.
        trash_lifetime: seconds a deleted block stays in the trash, recoverable (0: deleted at once).
        trash_min_age: a DELETE keeps blocks written or touched more recently than this
            (default: *signing_ttl*, as keepstore's ``BlobSigningTTL``).
        trash_check_interval: seconds between two passes emptying expired trash.
        scrub_interval: seconds between two scrub passes (None: no background scrub).
        scrub_rate: bytes/s a scrub pass reads at most, on average (None: unbounded).
        clock: unix time for trash ages and deadlines (tests pass a fake one).
        metrics: serve Prometheus metrics on ``/metrics`` (`ServerMetrics`), to the system token.
        metrics_public: serve them to anyone.
        reuse_port: listen with ``SO_REUSEPORT``, so other processes (``keep serve --workers``) can
            listen on the same port and the kernel spreads connections over them.
        background: run the background jobs (trash emptier, scrub); a worker process leaves
            them to the first process, so they run once per machine.
    """

    def __init__(
        self,
        volumes: Sequence[Volume | str | os.PathLike[str]] | Volume | str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        signing_key: bytes | str | None = None,
        signing_ttl: int = DEFAULT_SIGNING_TTL,
        require_signatures: bool = False,
        system_token: str | None = None,
        max_requests: int = 128,
        idle_timeout: float = 60.0,
        min_rate: float = MIN_BODY_RATE,
        max_connections: int | None = None,
        first_byte_timeout: float = 10.0,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        fsync: bool = True,
        trash_lifetime: float = DEFAULT_TRASH_LIFETIME,
        trash_min_age: float | None = None,
        trash_check_interval: float = 3600.0,
        scrub_interval: float | None = None,
        scrub_rate: float | None = 8 << 20,
        clock: Callable[[], float] = time.time,
        metrics: bool = True,
        metrics_public: bool = False,
        reuse_port: bool = False,
        background: bool = True,
    ) -> None:
        if isinstance(volumes, (Volume, str, os.PathLike)):  # one volume (a str is not a list of them)
            volumes = [volumes]
        if not volumes:
            raise ConfigError("keep serve needs at least one --volume")
        if require_signatures and not signing_key:
            raise ConfigError("--require-signatures needs a signing key (--signing-key-file)")
        if max_requests < 1:
            raise ConfigError(f"max_requests must be at least 1, got {max_requests}")
        if max_connections is not None and max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
        self.volumes = [self._volume(v, fsync) for v in volumes]
        self.host = host
        self.port = port
        self.permissions = Permissions(signing_key.encode() if isinstance(signing_key, str) else signing_key,
                                       signing_ttl, require_signatures, system_token)
        if min_rate <= 0:
            raise ConfigError(f"min_rate must be positive, got {min_rate}")
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self.faults = FaultPlan()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=100_000)
        self.tls: ssl.SSLContext | None = None
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise ConfigError("TLS needs both --tls-cert and --tls-key")
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                self.tls.load_cert_chain(str(tls_cert), str(tls_key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load TLS certificate {tls_cert} / key {tls_key}: {exc}") from exc
        self.first_byte_timeout = first_byte_timeout
        self.admission = Admission(max_requests, max_connections or default_max_connections())
        policy = TrashPolicy(trash_lifetime, signing_ttl if trash_min_age is None else trash_min_age,
                             trash_check_interval)
        self.metrics = ServerMetrics(self.volumes, lambda: self.admission.in_flight,
                                     public=metrics_public) if metrics else None
        # Worker processes (reuse_port) share the block locks through a file in the first volume.
        self.blocks = Blocks(self.volumes, policy, clock,
                             self.volumes[0].path / ".keep-locks" if reuse_port else None)
        self.trash_emptier = Periodic("keep-trash", self.blocks.empty_trash, policy.check_interval)
        stop_scrub = threading.Event()
        self.scrubber = Scrubber(self.blocks, scrub_rate, sleep=stop_scrub.wait, stopping=stop_scrub.is_set)
        self.scrub_job: Periodic | None = None
        if scrub_interval is not None:
            if scrub_interval <= 0:
                raise ConfigError(f"scrub interval must be positive, got {scrub_interval}")
            self.scrub_job = Periodic("keep-scrub", self.scrubber.scrub_once, scrub_interval, stop_scrub)
        self.reuse_port = reuse_port
        self.background = background
        self._httpd: KeepHTTPServer | None = None
        self._bound: KeepHTTPServer | None = None  # listening, not serving yet (see listen())
        self._thread: threading.Thread | None = None
        for volume in self.volumes:
            volume.reclaim()

    @staticmethod
    def _volume(spec: Volume | str | os.PathLike[str], fsync: bool) -> Volume:
        if isinstance(spec, Volume):
            return spec
        if isinstance(spec, str):
            return parse_volume(spec, fsync=fsync)
        return Volume(Path(spec), fsync=fsync)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"KeepServer({self.url if self.port else 'unbound'}, {len(self.volumes)} volume(s), {state})"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def in_flight(self) -> int:
        """How many requests hold an admission slot now (at most `max_requests`)."""
        return self.admission.in_flight

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        return self.admission.connections

    @property
    def max_requests(self) -> int:
        return self.admission.max_requests

    @property
    def require_signatures(self) -> bool:
        return self.permissions.require_signatures

    @property
    def signing_ttl(self) -> int:
        return self.permissions.signing_ttl

    @property
    def url(self) -> str:
        """``http[s]://host:port/`` (the port is known once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def listen(self) -> int:
        """Bind and listen now, without serving yet (`start()` serves); the port. A process
        that forks workers learns its port this way before any thread runs."""
        if self._httpd is None and self._bound is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            context = Context(self.blocks, self.permissions, self.admission, self.faults, self.requests,
                              self.idle_timeout, self.min_rate, self.first_byte_timeout, self.metrics)
            self._bound = KeepHTTPServer((self.host, self.port), KeepHandler, context, family, self.tls,
                                         reuse_port=self.reuse_port)
            self.port = self._bound.server_address[1]
        return self.port

    def relisten(self) -> None:
        """In a forked worker: close the socket inherited from the parent and listen on the
        same port with a socket of this process's own (needs *reuse_port*)."""
        if self._bound is not None:
            self._bound.server_close()
            self._bound = None
        self.listen()

    def start(self) -> "KeepServer":
        """Listen (on the same port as before after a `stop()`) and serve in a background thread."""
        if self._httpd is not None:
            return self
        self.listen()
        httpd, self._bound = self._bound, None
        assert httpd is not None
        httpd.on_fd_exhausted = lambda: self.admission.evict_idle(16)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"keep-serve-{self.port}", daemon=True)
        self._thread.start()
        if self.background:
            self.trash_emptier.start()
            if self.scrub_job is not None:
                self.scrub_job.start()
        log.info("listening on %s with %d volume(s)", self.url, len(self.volumes))
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to *grace* s), close every connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self.scrub_job is not None:
            self.scrub_job.stop()
        self.trash_emptier.stop()
        httpd.shutdown()
        httpd.server_close()
        self.admission.drain(grace)
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("stopped %s", self.url)

    def restart(self) -> "KeepServer":
        self.stop()
        return self.start()

    def __enter__(self) -> "KeepServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- blocks -----------------------------------------------------------------------------

    def find(self, md5: str, size: int | None) -> Found | None:
        """The first volume holding *md5* (with *size*, when given), or None."""
        return self.blocks.find(md5, size)

    def scrub_once(self) -> ScrubReport:
        """Read every block copy now and quarantine the damaged ones (what each background pass does)."""
        return self.scrubber.scrub_once()

    @property
    def scrub_passes(self) -> int:
        """Background scrub passes finished (see ``scrub_job.wait_for_passes``)."""
        return self.scrub_job.passes if self.scrub_job is not None else 0

    def empty_trash(self) -> int:
        """Remove trashed blocks past their deadline now (what the background pass does); how many."""
        return self.blocks.empty_trash()
