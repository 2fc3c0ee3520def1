"""KeepCluster: several `KeepServer`\\ s on 127.0.0.1 with temporary volumes, for tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..locator import Locator, LocatorLike

if TYPE_CHECKING:  # pragma: no cover
    from ..client import KeepClient
    from ..server import KeepServer

__all__ = ["DEFAULT_SYSTEM_TOKEN", "DEFAULT_TOKEN", "KeepCluster"]

DEFAULT_TOKEN = "keepstore-test-token"
DEFAULT_SYSTEM_TOKEN = "keepstore-test-system-token"


class KeepCluster:
    """*n* `KeepServer`\\ s on 127.0.0.1, each with its own volume under *base_dir*.

    Extra keyword arguments go to every `KeepServer` (``signing_key``, ``require_signatures``,
    ``max_requests``...). Writes skip fsync unless ``fsync=True``: test clusters favour speed.

    Args:
        n: How many servers.
        base_dir: Where their volumes go (default: a temporary directory removed by `stop`).
        token: The token `client()` and `env()` use.
        system_token: The servers' system token (for ``/index``).
        fsync: Make the servers' writes durable (off by default: tests favour speed).
    """

    def __init__(self, n: int = 3, base_dir: str | os.PathLike[str] | None = None, *,
                 token: str = DEFAULT_TOKEN, system_token: str = DEFAULT_SYSTEM_TOKEN,
                 fsync: bool = False, **server_options: Any) -> None:
        from ..server import KeepServer

        if n < 1:
            raise ValueError(f"a cluster needs at least one server, got {n}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="keep-cluster-")
            base_dir = self._tmp.name
        self.base_dir = Path(base_dir)
        self.token = token
        self.system_token = system_token
        self.servers: list[KeepServer] = [
            KeepServer([self.base_dir / f"server{i}"], system_token=system_token, fsync=fsync, **server_options)
            for i in range(n)
        ]

    def __repr__(self) -> str:
        return f"KeepCluster({len(self.servers)} servers, {self.base_dir})"

    def start(self) -> "KeepCluster":
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop(grace=2.0)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "KeepCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def urls(self) -> list[str]:
        """The servers' roots, in server order."""
        return [server.url for server in self.servers]

    @property
    def services(self) -> str:
        """The roots as one space-separated string (for ``KEEP_SERVICES``)."""
        return " ".join(self.urls)

    def env(self) -> dict[str, str]:
        """Environment entries pointing `KeepClient.from_env()` (and ``keep``) at this cluster."""
        return {"KEEP_SERVICES": self.services, "KEEP_TOKEN": self.token}

    def client(self, **options: Any) -> "KeepClient":
        """A `KeepClient` for this cluster; *options* go to its constructor."""
        from ..client import KeepClient

        options.setdefault("token", self.token)
        return KeepClient(services=self.urls, **options)

    def holders(self, locator: LocatorLike) -> list[int]:
        """Indexes of the servers whose volumes hold the block."""
        md5 = Locator.parse(locator).md5
        return [i for i, server in enumerate(self.servers)
                if any(volume.store.find(md5) is not None for volume in server.volumes)]

    def clear_faults(self) -> None:
        for server in self.servers:
            server.faults.clear()
