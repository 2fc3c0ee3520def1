"""tools/profile_server runs end to end, GET (plain and signed) and PUT, and prints one line per
round (the figures themselves are not checked: they are timings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "profile_server"


@pytest.mark.parametrize("mode", [[], ["--signed"], ["--put"]])
def test_profile_server_prints_latency_and_server_cpu_per_round(mode: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(TOOL), "--requests", "50", "--rounds", "2", *mode],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    method = "PUT" if mode == ["--put"] else "GET"
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert all(re.fullmatch(rf"median latency +[0-9.]+ µs +server CPU +[0-9.]+ µs/{method}", line) for line in lines)
