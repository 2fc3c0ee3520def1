"""keep completion (shtab) and a description in every sub-command's --help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keepstore.cli import build_parser

COMMANDS = ("put", "get", "ls", "cat", "head", "serve", "mount", "check", "repair", "gc", "copy", "diff", "sign", "config",
            "completion")


def keep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bash_script() -> str:
    result = keep("completion", "bash")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bash_script_names_every_sub_command(bash_script):
    line = next(line for line in bash_script.splitlines() if line.startswith("_shtab_keep_subparsers="))
    assert set(line.split("=", 1)[1].strip("()").split()) == set(COMMANDS)
    assert "complete -o bashdefault -F _shtab_keep keep" in bash_script


def complete(script_path: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of *words* (``keep`` first), with the script sourced."""
    program = (f'source {script_path}\n'
               f'COMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n'
               '_shtab_keep\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                            timeout=60, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_options_choices_and_paths(bash_script, tmp_path):
    script = tmp_path / "keep.bash"
    script.write_text(bash_script)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photo.jpg").write_bytes(b"")
    assert complete(script, ["keep", "p"], tmp_path) == ["put"]
    assert set(complete(script, ["keep", "c"], tmp_path)) == {"cat", "check", "config", "completion", "copy"}
    assert "--dry-run" in complete(script, ["keep", "put", "--d"], tmp_path)
    assert complete(script, ["keep", "put", "--progress", "j"], tmp_path) == ["json"]
    assert set(complete(script, ["keep", "put", "pho"], tmp_path)) == {"photos", "photo.jpg"}


def test_zsh_and_tcsh_scripts_are_generated():
    zsh = keep("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef keep") and "put" in zsh.stdout
    tcsh = keep("completion", "tcsh")
    assert tcsh.returncode == 0 and "complete keep" in tcsh.stdout


def test_an_unknown_shell_is_a_usage_error():
    result = keep("completion", "cmd.exe")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def sub_parsers() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # argparse has no public walk of its sub-parsers
    return dict(action.choices)  # type: ignore[arg-type]


def test_every_sub_command_is_known_to_this_test():
    assert set(sub_parsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_a_description_beyond_the_one_line_help(command):
    parser = sub_parsers()[command]
    description = parser.description  # type: ignore[attr-defined]
    assert description and len(description) > 40
    shown = keep(command, "--help")
    assert shown.returncode == 0
    # the help text wraps the description: compare its words
    usage_end = shown.stdout.index("\n\n")
    assert " ".join(description.split()[:6]) in " ".join(shown.stdout[usage_end:].split())


def test_top_level_help_names_the_environment_and_config_file():
    shown = keep("--help").stdout
    assert "KEEP_SERVICES" in shown and "config.yml" in shown and "completion" in shown


def test_completion_needs_no_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(KEEP_SERVICES="http://127.0.0.1:9", HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "keepstore", "completion", "bash"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "_shtab_keep" in result.stdout
