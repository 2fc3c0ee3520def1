"""Shared by the transfer tests (get/put of existing data, resume, update, diff): run ``keep`` in-process
against a real `KeepCluster` and count what its servers were asked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keepstore.cli import main
from keepstore.testing import KeepCluster

SIGNING_KEY = "transfer-test-signing-key-0123456789"

# Signing off; signing on (servers sign PUT answers and refuse unsigned GET/HEAD).
SIGNING = [pytest.param({}, id="unsigned"),
           pytest.param({"signing_key": SIGNING_KEY, "require_signatures": True}, id="signed")]


class Keep:
    """``keep`` run in-process against *cluster*: ``keep("put", ...)`` -> (exit code, stdout, stderr)."""

    def __init__(self, cluster: KeepCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.cluster = cluster
        self.capsys = capsys
        for name, value in cluster.env().items():
            monkeypatch.setenv(name, value)

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(args))
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out

    def requests(self, method: str) -> list[Any]:
        """Every request of *method* the servers recorded (2xx or not)."""
        return [r for s in self.cluster.servers for r in s.requests if r.method == method]

    def put_md5s(self) -> list[str]:
        """The md5 of every block body PUT to any server (one entry per replica written)."""
        return [r.path.strip("/").split("+")[0] for r in self.requests("PUT") if 200 <= r.status < 300]

    def get_md5s(self) -> list[str]:
        """The md5 of every block a server sent (one entry per GET answered 2xx)."""
        return [r.path.strip("/").split("+")[0] for r in self.requests("GET") if 200 <= r.status < 300]

    def forget(self) -> None:
        """Drop the request records (count what comes next)."""
        for s in self.cluster.servers:
            s.requests.clear()


def make_keep(keep_cluster_factory: Callable[..., KeepCluster], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> Keep:
    """For a test module's ``keep_cli`` fixture: ``keep`` against a fresh 3-server cluster; server
    options by ``parametrize("keep_cli", SIGNING, indirect=True)``."""
    options = getattr(request, "param", None) or {}
    return Keep(keep_cluster_factory(3, **options), monkeypatch, capsys)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
