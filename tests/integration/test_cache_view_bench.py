"""tools/bench's diskhit case measures what it says: four variants, every run a verified hit off the network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"

pytest.importorskip("arvados")


def test_bench_diskhit_reports_get_and_view_rows_against_arvados(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--only", "diskhit", "--reps", "1",
                           "--json", str(out), "--tmp", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    case = json.loads(out.read_text())["cases"]["diskhit"]
    assert set(case["runs"]) == {"ours", "ours_view", "theirs", "theirs_nocopy"}
    for runs in case["runs"].values():
        assert len(runs) == 1 and all(r["hit"] and r["ok"] and r["bytes"] == 64 * 2**20 for r in runs)
    # Ours as a view is a mapping of the cache file; get() and Arvados copied are bytes.
    assert case["kinds"] == {"ours": ["bytes"], "ours_view": ["mmap"], "theirs": ["bytes"], "theirs_nocopy": ["mmap"]}
    for name in ("MBps", "view_MBps", "nocopy_MBps", "view_ms", "nocopy_ms"):
        assert case["ours"][name] > 0 and case["theirs"][name] > 0 and case["ratio"][name] is not None
    assert "view_MBps" in proc.stdout
