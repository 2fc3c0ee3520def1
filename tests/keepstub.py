"""A small in-memory Keep server on 127.0.0.1 with scripted faults, for client tests."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

_PATH = re.compile(r"/([0-9a-f]{32})(?:\+([0-9]+))?(?:\+.*)?\Z")

Fault = Callable[["_Handler", str], bool]  # returns True when it answered the request itself


class KeepStub:
    """Stores blocks in a dict. ``faults`` is a list of (methods, action) consumed in order:
    each matching request pops the first entry and runs it.

    Actions: ``("status", code, headers)``, ``("corrupt",)``, ``("truncate",)``,
    ``("stall", seconds)``, ``("drip", bytes_per_second)``, ``("drop",)``, ``("delay", seconds)``.
    """

    def __init__(self, *, replicas_header: str | None = "1", classes_header: str | None = None,
                 sign: Callable[[str], str] | None = None) -> None:
        self.blocks: dict[str, bytes] = {}
        self.faults: list[tuple[set[str], tuple[Any, ...]]] = []
        self.requests: list[tuple[str, str, int, dict[str, str]]] = []
        self.peers: list[int] = []  # client port of each request, to see connection reuse
        self.put_spans: list[tuple[float, float]] = []  # (arrived, answered), monotonic, per PUT
        self.replicas_header = replicas_header
        self.classes_header = classes_header
        self.sign = sign
        self.lock = threading.Lock()
        stub = self

        class Handler(_Handler):
            server_stub = stub

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.connections: list[Any] = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def fail(self, *action: Any, methods: str = "GET HEAD PUT", times: int = 1) -> None:
        with self.lock:
            self.faults.extend((set(methods.split()), action) for _ in range(times))

    def take_fault(self, method: str) -> tuple[Any, ...] | None:
        with self.lock:
            for i, (methods, action) in enumerate(self.faults):
                if method in methods:
                    del self.faults[i]
                    return action
        return None

    def count(self, method: str) -> int:
        return sum(1 for m, *_ in self.requests if m == method)

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections, like a crashed server."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the handler
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    server_stub: KeepStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _record(self, status: int) -> None:
        # before the response goes out, so a client that has its answer sees the record
        self.server_stub.requests.append((self.command, self.path, status, dict(self.headers)))

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._record(status)
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def setup(self) -> None:
        super().setup()
        self.server_stub.connections.append(self.connection)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server_stub.peers.append(self.client_address[1])
        return ok

    def _fault(self, body: bytes | None) -> bool:
        action = self.server_stub.take_fault(self.command)
        if action is None:
            return False
        kind = action[0]
        if kind == "delay":
            time.sleep(action[1])
            return False  # then answer normally
        if kind == "status":
            self._answer(action[1], b"error\n", action[2] if len(action) > 2 else None)
        elif kind == "corrupt" and body is not None:
            self._answer(200, bytes([body[0] ^ 1]) + body[1:] if body else b"x")
        elif kind == "truncate" and body is not None:
            self._record(200)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif kind == "stall":
            self._record(0)
            time.sleep(action[1])
            self.close_connection = True
        elif kind == "drip" and body is not None:
            self._record(200)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = max(1, action[1] // 10)
            for start in range(0, len(body), step):
                try:
                    self.wfile.write(body[start:start + step])
                    self.wfile.flush()
                except OSError:
                    break
                time.sleep(0.1)
            self.close_connection = True
        elif kind == "drop":
            self._record(0)
            self.close_connection = True
        else:
            return False
        return True

    def _block(self) -> tuple[str | None, bytes | None]:
        match = _PATH.match(self.path)
        if not match:
            return None, None
        return match.group(1), self.server_stub.blocks.get(match.group(1))

    def do_GET(self) -> None:
        md5, body = self._block()
        if self._fault(body):
            return
        if md5 is None:
            self._answer(400)
        elif body is None:
            self._answer(404, b"not found\n")
        else:
            self._answer(200, body)

    def do_HEAD(self) -> None:
        body = self._block()[1]
        if self._fault(body):
            return
        self._answer(200 if body is not None else 404, b"", {"Content-Length": str(len(body or b""))})

    def do_PUT(self) -> None:
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        if self._fault(data):
            return
        self.server_stub.put_spans.append((arrived, time.monotonic()))
        md5 = self._block()[0]
        if md5 is None or hashlib.md5(data).hexdigest() != md5:
            self._answer(422, b"hash mismatch\n")
            return
        stub = self.server_stub
        stub.blocks[md5] = data
        loc = f"{md5}+{len(data)}"
        if stub.sign:
            loc = stub.sign(loc)
        headers = {}
        if stub.replicas_header is not None:
            headers["X-Keep-Replicas-Stored"] = stub.replicas_header
        if stub.classes_header is not None:
            headers["X-Keep-Storage-Classes-Confirmed"] = stub.classes_header
        self._answer(200, (loc + "\n").encode(), headers)
