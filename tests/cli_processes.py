"""Helpers for tests that drive ``keep`` as a real process: a private environment, ports that
refuse, and a server that accepts connections and never answers."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Mapping
from pathlib import Path

TOKEN = "opclient-test-token-0123456789"


def private_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``keep`` process with nothing from the developer's machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.update(extra)
    return env


def keep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "keepstore", *args]


def run_keep(env: Mapping[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(keep_command(*args), env=dict(env), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def refused_url() -> str:
    """A loopback URL whose port refuses connections (bound, then closed: nothing listens)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers (reads and drops what comes).

    ``connected`` is set once a client has connected, so a test can act while a request is
    certainly in flight.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.connected = threading.Event()
        self.received = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by stop()
                return
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:  # closed by stop()
                return
            if not chunk:
                return
            self.received += len(chunk)
            self.connected.set()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

def on_a_terminal(env: dict[str, str], *args: str, columns: int = 120) -> tuple[int, bytes, str]:
    """Run keep with stderr on a pty; return (exit code, stdout, what the terminal was sent)."""
    leader, follower = os.openpty()
    if columns:  # a new pty is 0 x 0
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "keepstore", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out = proc.stdout.read() if proc.stdout else b""
        return proc.wait(timeout=120), out, shown.decode()
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
