"""tools/bench server runs end to end and writes its documented JSON shape (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


def test_bench_server_quick_writes_json_with_medians_ratios_and_load(tmp_path: Path) -> None:
    out = tmp_path / "server.json"
    proc = subprocess.run([sys.executable, str(BENCH), "server", "--quick", "--reps", "1", "--only", "small,put64",
                           "--json", str(out), "--tmp", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert {"loadavg_before", "loadavg_after", "machine", "reps", "workers", "nginx"} <= results["meta"].keys()
    small, put = results["cases"]["small"], results["cases"]["put64"]
    assert small["unit"] == "µs" and len(small["runs"]["keep"]) == 1
    if results["meta"]["nginx"]:  # nginx installed: measured in the same run, with the ratio and target
        assert len(small["runs"]["nginx"]) == 1 and small["target"]["ratio"] == 3.0
    assert put["medians"]["md5"] > 0 and put["ratio"] > 0 and put["target"]["ratio"] == 0.8
    # the file system's own rate for a new 64 MiB file, measured beside the PUT as its ceiling
    assert put["medians"]["file"] > 0 and put["file_ceiling"] == put["medians"]["file"] / put["medians"]["md5"]
    assert "the volume's file system takes a new 64 MiB file at" in proc.stdout
    assert "small" in proc.stdout and "put64" in proc.stdout
    assert not list(tmp_path.glob("bench-server-*"))  # its volume and nginx files are removed
