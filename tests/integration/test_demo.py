"""The README's first command: `tools/demo`, the main job on one machine, runs and verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "tools" / "demo"


@pytest.mark.timeout(180)
def test_demo_stores_on_the_default_and_on_three_servers_and_reads_back_with_one_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "a local store" in out and "replicas=2" in out
    assert out.count(" ok (") >= 6  # three blocks and three dataset files read back verified
    assert "== 3. Stopping server0" in out  # reads after it are the ones counted above
    assert out.rstrip().splitlines()[-1].startswith("OK: everything stored with copies=2 was read back")
