"""tools/bench runs a cheap case end to end and writes the documented JSON shape (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"

pytest.importorskip("arvados")


def run_bench(tmp_path: Path, only: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`tools/bench --quick --only ONLY --reps 1`, its volumes and JSON in *tmp_path*: its run and results."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", only, "--reps", "1",
                           "--json", str(out), "--tmp", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_bench_quick_miss_writes_json_with_both_clients_and_ratios(tmp_path):
    proc, results = run_bench(tmp_path, "miss")
    assert {"meta", "cases"} <= results.keys()
    assert {"loadavg_before", "loadavg_after", "machine", "reps"} <= results["meta"].keys()
    miss = results["cases"]["miss"]
    assert {"ours", "theirs", "ratio", "runs"} <= miss.keys()
    assert {"miss_ms", "miss_max_ms"} <= miss["ours"].keys() == miss["theirs"].keys()
    assert len(miss["runs"]["ours"]) == len(miss["runs"]["theirs"]) == 1
    assert "miss" in proc.stdout


def test_bench_ceilings_report_what_a_new_block_file_costs_the_volume_filesystem(tmp_path):
    proc, results = run_bench(tmp_path, "ceilings")
    ceilings = results["ceilings"]
    assert ceilings["file_create_us"] > 0 and ceilings["file_create_after_delete_us"] > 0
    assert "right after as many deletes" in proc.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # the probe's files are gone
