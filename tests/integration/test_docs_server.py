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
    assert "7 passed" in out.stdout
