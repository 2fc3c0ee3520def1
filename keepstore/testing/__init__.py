"""keepstore's pytest plugin: Keep servers, clusters and local stores as fixtures, with faults.

Installed with keepstore and registered through the ``pytest11`` entry point, so in any
project that has keepstore these fixtures are available without imports:

- ``keep_local_store``: a `LocalStore` in a temporary directory.
- ``keep_server``: one `KeepServer` on 127.0.0.1 with a temporary volume.
- ``keep_cluster``: a `KeepCluster` of three servers (``cluster.client()`` gives a client).
- ``keep_cluster_factory``: ``make(n=..., **server_options)`` for other shapes.

Each server has a ``faults`` plan (`FaultPlan`): fail with a status N times, delay, throttle,
stall, corrupt or truncate bodies, drop connections, behave full; ``stop()`` and ``start()``
take it down and bring it back on the same port; ``hold(gate)`` keeps requests at a `Gate`
until the test opens it. `wait_until` polls a condition against a deadline. See ``docs/testing.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .cluster import DEFAULT_SYSTEM_TOKEN, DEFAULT_TOKEN, KeepCluster
from .waiting import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from ..local import LocalStore
    from ..server import KeepServer

__all__ = [
    "DEFAULT_SYSTEM_TOKEN",
    "DEFAULT_TOKEN",
    "Gate",
    "KeepCluster",
    "keep_cluster",
    "keep_cluster_factory",
    "keep_local_store",
    "keep_server",
    "wait_until",
]

# Test doubles live in keepstore.testing.doubles and Gate beside FaultPlan; they are offered here
# too, imported on first use so that loading the plugin does not import the whole client.
_LAZY = {"VerifierTransport": "keepstore.testing.doubles", "KeepClientMock": "keepstore.testing.doubles",
         "mock_client": "keepstore.testing.doubles", "Gate": "keepstore.server.faults"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keepstore.testing' has no attribute {name!r}")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def keep_local_store(tmp_path: Path) -> "LocalStore":
    """A `LocalStore` in a fresh temporary directory."""
    from ..local import LocalStore

    return LocalStore(tmp_path / "keep-local-store")


@pytest.fixture
def keep_server(tmp_path: Path) -> Iterator["KeepServer"]:
    """One running `KeepServer` on 127.0.0.1 with a temporary volume (no fsync)."""
    from ..server import KeepServer

    server = KeepServer([tmp_path / "keep-server-volume"], system_token=DEFAULT_SYSTEM_TOKEN, fsync=False)
    server.start()
    yield server
    server.stop(grace=2.0)


@pytest.fixture
def keep_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., KeepCluster]]:
    """``make(n=3, **options)`` -> a started `KeepCluster`; all are stopped after the test."""
    made: list[KeepCluster] = []

    def make(n: int = 3, **options: Any) -> KeepCluster:
        cluster = KeepCluster(n, tmp_path / f"keep-cluster-{len(made)}", **options)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def keep_cluster(keep_cluster_factory: Callable[..., KeepCluster]) -> KeepCluster:
    """Three running `KeepServer`\\ s on 127.0.0.1 (``.client()``, ``.servers[i].faults``)."""
    return keep_cluster_factory(3)
