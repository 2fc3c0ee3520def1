"""Shared by the server tests: a client that reads an answer far slower than the server's minimum rate."""

from __future__ import annotations

import socket
import threading
import time


class SlowReader(threading.Thread):
    """GET a block and drain it at about 320 KiB/s: far under the server's minimum rate, but
    never idle for as long as the idle timeout (the attack of issue 15, item 1, scaled up).
    ``received`` counts the bytes read; ``closed_by_server`` is set once the server hung up."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.received = 0
        self.closed_by_server = threading.Event()

    def run(self) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            try:
                while chunk := sock.recv(16 << 10):
                    self.received += len(chunk)
                    time.sleep(0.05)  # the attacker's pace (the behaviour under test), not synchronisation
            except ConnectionResetError:
                pass
            self.closed_by_server.set()
