"""The examples in docs/server.md and docs/testing.md run as written."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_server_md_examples_run() -> None:
    result = doctest.testfile(str(DOCS / "server.md"), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


def test_testing_md_example_module_passes_with_the_installed_plugin(tmp_path: Path) -> None:
    text = (DOCS / "testing.md").read_text()
    blocks = re.findall(r"```python\n(# test_my_pipeline\.py\n.*?)```", text, re.S)
    assert len(blocks) == 1
    (tmp_path / "test_my_pipeline.py").write_text(blocks[0])
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 passed" in out.stdout


def _tests_dir_sources() -> dict[str, str]:
    tests = Path(__file__).resolve().parents[1]
    return {str(p.relative_to(tests)): p.read_text() for p in sorted(tests.rglob("*.py"))}


def test_every_wall_clock_test_is_listed_in_testing_md_with_why() -> None:
    marked = set()
    for text in _tests_dir_sources().values():
        marked |= set(re.findall(r"@pytest\.mark\.wall_clock[^\n]*\n(?:@[^\n]*\n)*def (test_\w+)", text))
    listed = set(re.findall(r"^\| `(test_\w+)` \|", (DOCS / "testing.md").read_text(), re.M))
    assert marked, "the marker is used somewhere"
    assert marked == listed, f"marked, not listed: {sorted(marked - listed)}; listed, not marked: {sorted(listed - marked)}"


def test_every_sleep_in_the_tests_says_why_it_is_not_synchronisation() -> None:
    bare = []
    for name, text in _tests_dir_sources().items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not re.search(r"\bsleep\((?!slept)|Event\(\)\.wait\(", line) or "#" in line or "def " in line:
                continue
            if "deadline" in "\n".join(lines[max(0, i - 6):i]):  # a poll against a deadline
                continue
            bare.append(f"{name}:{i + 1}")
    assert bare == [], "sleeps without a comment saying why (wait on a Gate or wait_until instead)"
