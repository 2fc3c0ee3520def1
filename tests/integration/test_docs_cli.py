"""The console examples in docs/cli.md run as written and print what they show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def examples(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for every ``$ `` line of every console block, in order."""
    out: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, expected = chunk.partition("\n")
            out.append((command, expected))
    return out


def matches(expected: str, actual: str) -> bool:
    """Like doctest's ELLIPSIS: ``...`` stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.strip().split("..."))
    return re.fullmatch(pattern, actual.strip(), re.S) is not None


def test_every_console_example_in_cli_md_prints_what_it_shows(tmp_path):
    steps = examples(DOC.read_text())
    assert len(steps) >= 15
    # One shell for the whole page, so variables set by one example are there for the next;
    # a marker line separates each command's output.
    script = "".join(f"echo '@@ {i}'\n{command}\n" for i, (command, _) in enumerate(steps))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_", "TQDM_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_DATA_HOME=str(tmp_path / "data"), KEEP_LOCAL_STORE=str(tmp_path / "store"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    run = subprocess.run(["bash", "--norc", "--noprofile"], input=script, capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    outputs = re.split(r"^@@ \d+\n", run.stdout, flags=re.M)[1:]
    assert len(outputs) == len(steps), run.stdout + run.stderr
    for (command, expected), actual in zip(steps, outputs, strict=True):
        assert matches(expected, actual), f"$ {command}\nexpected:\n{expected}\ngot:\n{actual}{run.stderr}"
