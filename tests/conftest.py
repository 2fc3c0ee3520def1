"""Shared fixtures: every test runs with a clean, private environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hashing_threads import Threads

    from keepstore.server import KeepServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long-chaos", action="store_true",
                     help="also run the tests marked long_chaos (the long chaos run; .ci/run passes this)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long-chaos"):
        return
    skip = pytest.mark.skip(reason="the long chaos run needs --long-chaos (.ci/run passes it)")
    for item in items:
        if "long_chaos" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what tests recorded as ``chaos_figures`` (test_chaos.py): wanted in CI logs."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.getreports(outcome):
            for name, value in getattr(report, "user_properties", ()):
                if name == "chaos_figures":
                    terminalreporter.write_sep("-", f"chaos figures ({report.nodeid.rsplit('[', 1)[-1].rstrip(']')})")
                    terminalreporter.write_line(str(value))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's real config, tokens or stores."""
    for name in (
        "KEEP_SERVICES", "KEEP_TOKEN", "KEEP_LOCAL_STORE", "KEEP_CACHE_DIR", "KEEP_CONFIG",
        "ARVADOS_KEEP_SERVICES", "ARVADOS_KEEP_PROXY", "ARVADOS_API_HOST", "ARVADOS_API_TOKEN",
        "ARVADOS_API_HOST_INSECURE",
    ):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))


@pytest.fixture
def hasher_threads() -> Threads:
    """The PUT-hashing threads started since the test began (`hashing_threads.started_since`)."""
    from hashing_threads import started_since  # here: the conftest imports no keepstore module itself

    return started_since()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[KeepServer]]:
    """Three `KeepServer`s in this process, one volume each (``tmp_path/v0`` .. ``v2``); a
    module may define its own ``servers`` for another shape."""
    from keepstore.server import KeepServer  # here: the conftest imports no keepstore module at load

    made = [KeepServer([tmp_path / f"v{i}"]).start() for i in range(3)]
    yield made
    for server in made:
        server.stop()
