"""The ``keep serve`` sub-command: run a `KeepServer` until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..locator import DEFAULT_SIGNING_TTL
from .types import non_negative_seconds, positive_seconds, read_secret

if TYPE_CHECKING:  # pragma: no cover
    from ..server.app import KeepServer

__all__ = ["build_server", "parse_listen", "register", "run"]


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep serve`` to the command line."""
    p = sub.add_parser(
        "serve", help="run a Keep-protocol server on this machine",
        description="Serve blocks from one or more volume directories over the Keep protocol. "
                    "Prints 'listening on URL' once ready; stops cleanly on SIGTERM or SIGINT.")
    p.add_argument("--listen", default="127.0.0.1:25107", metavar="HOST:PORT",
                   help="address to listen on; port 0 picks a free port (default %(default)s)")
    p.add_argument("--volume", action="append", required=True, metavar="DIR[:CLASS,...]",
                   help="a block directory, optionally with the storage classes it confirms "
                        "(default class: default); repeat for several volumes. It must exist unless --create")
    p.add_argument("--create", action="store_true", help="make volume directories that do not exist yet")
    p.add_argument("--signing-key-file", type=Path, metavar="FILE",
                   help="sign PUT responses with the blob signing key in FILE")
    p.add_argument("--signing-ttl", type=int, default=DEFAULT_SIGNING_TTL, metavar="SECONDS",
                   help="lifetime of signatures (default %(default)s)")
    p.add_argument("--require-signatures", action="store_true",
                   help="refuse GET/HEAD of locators without a valid signature")
    p.add_argument("--system-token-file", type=Path, metavar="FILE",
                   help="the token that may read /index, DELETE blocks (to the trash) and untrash them")
    p.add_argument("--trash-lifetime", type=non_negative_seconds, default=14 * 86400, metavar="SECONDS",
                   help="how long a deleted block stays in the trash, recoverable with PUT /untrash/<locator>; "
                        "0 deletes at once (default %(default)s, two weeks)")
    p.add_argument("--trash-min-age", type=non_negative_seconds, default=None, metavar="SECONDS",
                   help="DELETE keeps blocks written or touched more recently than this (default: the signing TTL)")
    p.add_argument("--trash-check-interval", type=positive_seconds, default=3600.0, metavar="SECONDS",
                   help="how often expired trash is emptied (default %(default)s)")
    p.add_argument("--scrub-interval", type=positive_seconds, default=None, metavar="SECONDS",
                   help="read and verify every block in the background, a pass every SECONDS; damaged "
                        "copies are quarantined (default: no scrub)")
    p.add_argument("--scrub-rate", type=positive_seconds, default=8 << 20, metavar="BYTES_PER_SECOND",
                   help="a scrub pass reads at most this much per second on average (default %(default)s)")
    p.add_argument("--max-requests", type=int, default=128, metavar="N",
                   help="answer 503 beyond N requests in flight (default %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="close connections idle (or stalled mid-request) this long (default %(default)s)")
    p.add_argument("--metrics-public", action="store_true", help="serve /metrics without the system token")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="open connections (one thread each) at most; beyond it the longest-idle one is "
                        "closed (default: what the open-file limit allows, at most 4096)")
    p.add_argument("--min-rate", type=float, default=32768, metavar="BYTES_PER_SECOND",
                   help="request and response bodies must average this rate after one idle timeout "
                        "of grace, or the connection is closed (default %(default)s)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key for --tls-cert (PEM)")
    p.add_argument("--no-fsync", action="store_true", help="skip fsync on writes (faster, not crash safe)")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="serve from N processes on one port (SO_REUSEPORT), for several CPUs; limits such as "
                        "--max-requests apply per process, the background jobs run in the first (default 1)")
    p.set_defaults(func=run)

def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:  # isdigit() takes "²"
        raise ConfigError(f"--listen {text!r}: need HOST:PORT with PORT a number in 0-65535 (0: any free port), "
                          f"e.g. 127.0.0.1:25107 or [::1]:0")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def build_server(args: argparse.Namespace) -> KeepServer:
    """The `KeepServer` that ``keep serve`` *args* describe (not listening yet)."""
    from ..server.app import KeepServer
    from ..server.volumes import parse_volume

    host, port = parse_listen(args.listen)
    workers = getattr(args, "workers", 1)
    volumes = [parse_volume(spec, create=args.create, fsync=not args.no_fsync) for spec in args.volume]
    key = read_secret(args.signing_key_file, "signing key") if args.signing_key_file else None
    system_token = read_secret(args.system_token_file, "system token") if args.system_token_file else None
    return KeepServer(
        volumes, host=host, port=port,
        signing_key=key, signing_ttl=args.signing_ttl,
        require_signatures=args.require_signatures,
        system_token=system_token,
        max_requests=args.max_requests, idle_timeout=args.idle_timeout, min_rate=args.min_rate,
        max_connections=args.max_connections, metrics_public=args.metrics_public,
        tls_cert=args.tls_cert, tls_key=args.tls_key, fsync=not args.no_fsync,
        trash_lifetime=args.trash_lifetime, trash_min_age=args.trash_min_age,
        trash_check_interval=args.trash_check_interval,
        scrub_interval=args.scrub_interval, scrub_rate=args.scrub_rate, reuse_port=workers > 1,
    )


def wait_for_workers(ready: int, count: int, logger: logging.Logger, timeout: float = 60.0) -> None:
    """Read one byte per worker from the *ready* pipe (each writes it once its socket listens),
    so "listening" is announced only when every worker takes connections. A worker that dies
    first closes its end: the read sees end-of-file and the parent goes on with those left."""
    got, deadline = 0, time.monotonic() + timeout
    try:
        while got < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready], [], [], left)[0]:
                logger.warning("%d of %d worker(s) not listening after %.0f s", count - got, count, timeout)
                return
            chunk = os.read(ready, count - got)
            if not chunk:  # every worker's end is closed: the rest died before listening
                logger.warning("%d of %d worker(s) exited before listening", count - got, count)
                return
            got += len(chunk)
    finally:
        os.close(ready)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal arrives; in-flight requests finish before the process exits."""
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    server = build_server(args)
    logger = logging.getLogger("keepstore.server")
    if getattr(args, "debug", False):
        logger.setLevel(logging.DEBUG)  # `keep --debug` set up the root handler: use it, once
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if args.quiet:
        logging.getLogger("keepstore.server.access").setLevel(logging.WARNING)
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.listen()  # the port, before any thread runs: workers fork from here
    parent, children = os.getpid(), list[int]()
    ready_r, ready_w = os.pipe()  # each worker writes one byte once its own socket listens
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:  # a worker: its own socket on the port, no background jobs (the first process runs them)
            children, server.background = [], False
            os.close(ready_r)
            server.relisten()
            os.write(ready_w, b".")
            os.close(ready_w)
            break
        children.append(pid)
    server.start()
    if os.getpid() == parent:
        os.close(ready_w)
        wait_for_workers(ready_r, len(children), logger)
        print(f"listening on {server.url}", flush=True)
    while not done.wait(0.5):
        if os.getpid() != parent and os.getppid() != parent:  # the first process is gone: so is this worker
            break
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0]:
                logger.warning("worker process %d exited; %d worker(s) left", pid, len(children))
                children.remove(pid)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signal.SIGTERM)
    server.stop()
    for pid in children:
        with contextlib.suppress(ChildProcessError):  # reaped already
            os.waitpid(pid, 0)
    return 0  # a worker too: it exits as the command does (--workers forks: a command-line option only)
