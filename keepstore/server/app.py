"""KeepServer: the Keep block protocol over HTTP/1.1 for one machine, with fault injection."""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from ..locator import DEFAULT_SIGNING_TTL, Locator, sign_locator, signature_for
from .faults import FaultPlan
from .handler import RequestRecord, _Handler, _HTTPServer
from .volumes import Volume, parse_volume

__all__ = ["KeepServer", "RequestRecord"]

log = logging.getLogger("keepstore.server")


class KeepServer:
    """A Keep-protocol server on *host*:*port* storing blocks in *volumes*.

    ``port=0`` picks a free port (see `url` after `start()`). `stop()` finishes requests in
    flight (up to *grace* seconds), closes idle keep-alive connections and frees the port;
    `start()` again listens on the same port. `faults` scripts misbehaviour for tests and
    `requests` records what was asked. See ``docs/server.md``.
    """

    def __init__(
        self,
        volumes: Sequence[Volume | str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        signing_key: bytes | str | None = None,
        signing_ttl: int = DEFAULT_SIGNING_TTL,
        require_signatures: bool = False,
        system_token: str | None = None,
        max_requests: int = 128,
        idle_timeout: float = 60.0,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        fsync: bool = True,
    ) -> None:
        if not volumes:
            raise ConfigError("keep serve needs at least one --volume")
        if require_signatures and not signing_key:
            raise ConfigError("--require-signatures needs a signing key (--signing-key-file)")
        if max_requests < 1:
            raise ConfigError(f"max_requests must be at least 1, got {max_requests}")
        self.volumes = [self._volume(v, fsync) for v in volumes]
        self.host = host
        self.port = port
        self._signing_key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self.signing_ttl = signing_ttl
        self.require_signatures = require_signatures
        self._system_token = system_token
        self.max_requests = max_requests
        self.idle_timeout = idle_timeout
        self.faults = FaultPlan()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=100_000)
        self._ssl: ssl.SSLContext | None = None
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise ConfigError("TLS needs both --tls-cert and --tls-key")
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                self._ssl.load_cert_chain(str(tls_cert), str(tls_key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load TLS certificate {tls_cert} / key {tls_key}: {exc}") from exc
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state = threading.Condition()
        self._inflight = 0
        self._connections: set[socket.socket] = set()
        for volume in self.volumes:
            volume.store.remove_stale_temp_files()

    @staticmethod
    def _volume(spec: Volume | str | os.PathLike[str], fsync: bool) -> Volume:
        if isinstance(spec, Volume):
            return spec
        if isinstance(spec, str):
            volume = parse_volume(spec)
            volume.fsync = fsync
            volume.store.fsync = fsync
            return volume
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
        with self._state:
            return self._inflight

    @property
    def url(self) -> str:
        """``http[s]://host:port/`` (the port is known once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._ssl else 'http'}://{host}:{self.port}/"

    def start(self) -> "KeepServer":
        """Listen (on the same port as before after a `stop()`) and serve in a background thread."""
        if self._httpd is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        httpd = _HTTPServer((self.host, self.port), _Handler, self, family)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"keep-serve-{self.port}", daemon=True)
        self._thread.start()
        log.info("listening on %s with %d volume(s)", self.url, len(self.volumes))
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to *grace* s), close every connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        deadline = time.monotonic() + grace
        with self._state:
            while self._inflight and time.monotonic() < deadline:
                self._state.wait(0.05)
            connections = list(self._connections)
        for conn in connections:  # idle keep-alive connections (and stragglers past the grace)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
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

    # -- admission and bookkeeping ----------------------------------------------------------

    def _admit(self) -> bool:
        with self._state:
            if self._inflight >= self.max_requests:
                return False
            self._inflight += 1
            return True

    def _release(self) -> None:
        with self._state:
            self._inflight -= 1
            self._state.notify_all()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._state:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- auth helpers -----------------------------------------------------------------------

    def sign(self, loc: Locator, token: str | None) -> Locator:
        if not self._signing_key or not token:
            return loc
        return sign_locator(loc, key=self._signing_key, token=token, ttl=self.signing_ttl)

    def check_signature(self, loc: Locator, token: str | None) -> tuple[int, str] | None:
        """None when the GET/HEAD may proceed, else (status, reason) as keepstore 3.x answers."""
        if not self.require_signatures:
            return None
        if not token:
            return 401, "no token"
        hint = loc.permission_hint
        if hint is None:
            return 400, "unsigned locator"
        assert self._signing_key is not None
        expected = signature_for(loc.md5, token, hint[42:], self._signing_key, self.signing_ttl)
        if not hmac.compare_digest(expected, hint[1:41]):
            return 400, "invalid signature"
        if loc.is_expired():
            return 401, "expired signature"
        return None

    def check_system_token(self, token: str | None) -> tuple[int, str] | None:
        if not token:
            return 401, "no token"
        if not self._system_token or not hmac.compare_digest(token.encode(), self._system_token.encode()):
            return 403, "not the system token"
        return None

    def find(self, md5: str, size: int | None) -> tuple[Volume, Path, int] | None:
        """The first volume holding *md5* (with *size*, when given)."""
        for volume in self.volumes:
            path = volume.store.find(md5)
            if path is None:
                continue
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                continue
            if size is None or actual == size:
                return volume, path, actual
        return None
