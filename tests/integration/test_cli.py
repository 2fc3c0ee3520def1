"""The ``keep`` command line, run as ``python -m keepstore`` against a LocalStore."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keepstore

FOO_LOC = "d3b07384d113edec49eaa6238ad5ff00+4"  # b"foo\n"
MISSING = "d3b07384d113edec49eaa6238ad5ff01+4"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private environment: no Keep settings from the developer's machine."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    base.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        KEEP_LOCAL_STORE=str(tmp_path / "store"),
    )
    return base


def keep(env: dict[str, str], *args: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, input=stdin,
                          capture_output=True, timeout=60, cwd=cwd)


def assert_one_clear_line(result: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("keep: error: ")
    for fragment in fragments:
        assert fragment in err
    return err


def test_put_blocks_prints_one_locator_per_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"foo\n")
    (tmp_path / "b").write_bytes(b"")
    result = keep(env, "put", "--blocks", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [FOO_LOC, keepstore.EMPTY_BLOCK]
    assert (tmp_path / "store" / "d3b" / "d3b07384d113edec49eaa6238ad5ff00").read_bytes() == b"foo\n"


def test_put_blocks_reads_stdin_for_dash(env: dict[str, str]) -> None:
    result = keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    assert (result.returncode, result.stdout.decode().strip()) == (0, FOO_LOC)


def test_get_writes_the_block_to_stdout(env: dict[str, str]) -> None:
    data = os.urandom(300_000)
    loc = keep(env, "put", "--blocks", "-", stdin=data).stdout.decode().strip()
    for args in ((loc,), (loc, "-")):
        result = keep(env, "get", *args)
        assert result.returncode == 0 and result.stdout == data


def test_get_writes_the_block_to_a_file(env: dict[str, str], tmp_path: Path) -> None:
    keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"old contents, replaced")
    result = keep(env, "get", "--force", FOO_LOC, str(dest))  # #17: get refuses to clobber without it
    assert (result.returncode, result.stdout) == (0, b"")
    assert dest.read_bytes() == b"foo\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".keep-")) == []


def test_get_to_a_relative_file_name(env: dict[str, str], tmp_path: Path) -> None:
    keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    assert keep(env, "get", FOO_LOC, "rel.txt", cwd=tmp_path).returncode == 0
    assert (tmp_path / "rel.txt").read_bytes() == b"foo\n"


def test_head_reports_a_present_block(env: dict[str, str]) -> None:
    keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    result = keep(env, "head", FOO_LOC)
    assert result.returncode == 0
    assert FOO_LOC in result.stdout.decode()


@pytest.mark.parametrize("command", ["get", "head"])
def test_missing_block_exits_3_with_one_line_on_stderr(env: dict[str, str], command: str) -> None:
    result = keep(env, command, MISSING)
    assert result.returncode == 3
    assert result.stdout == b""
    assert_one_clear_line(result, MISSING)


@pytest.mark.parametrize("command", ["get", "head"])
@pytest.mark.parametrize("text", ["nope", "D3B07384D113EDEC49EAA6238AD5FF00+4", f"{FOO_LOC}+z", "../../etc/passwd"])
def test_invalid_locator_is_one_clear_line_and_non_zero(env: dict[str, str], command: str, text: str) -> None:
    result = keep(env, command, text)
    assert result.returncode not in (0, 3)
    assert_one_clear_line(result, "invalid", text)


def test_damaged_block_is_an_error_not_wrong_bytes(env: dict[str, str], tmp_path: Path) -> None:
    keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    (tmp_path / "store" / "d3b" / "d3b07384d113edec49eaa6238ad5ff00").write_bytes(b"fox\n")
    result = keep(env, "get", FOO_LOC)
    assert result.returncode == 1 and result.stdout == b""
    assert_one_clear_line(result, FOO_LOC, "damaged")


def test_put_of_a_missing_file_names_it(env: dict[str, str], tmp_path: Path) -> None:
    result = keep(env, "put", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert_one_clear_line(result, str(tmp_path / "absent"), "No such file")


def test_put_blocks_of_a_file_over_64_mib_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(keepstore.MAX_BLOCK_SIZE + 1)
    result = keep(env, "put", "--blocks", str(big))
    assert result.returncode == 1
    assert_one_clear_line(result, "64 MiB")


def test_get_into_a_missing_directory_names_the_destination(env: dict[str, str], tmp_path: Path) -> None:
    keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    dest = tmp_path / "no" / "such" / "dir" / "out"
    result = keep(env, "get", FOO_LOC, str(dest))
    assert result.returncode == 1
    err = assert_one_clear_line(result, str(dest))
    assert ".keep-" not in err


def test_invalid_config_file_is_one_clear_line(env: dict[str, str]) -> None:
    config = Path(env["XDG_CONFIG_HOME"]) / "keepstore" / "config.yml"
    config.parent.mkdir(parents=True)
    config.write_text("copies: 2\ncopeis: 3\n")
    result = keep(env, "head", FOO_LOC)
    assert result.returncode == 1
    assert_one_clear_line(result, str(config), "line 2", "copeis")


def test_debug_shows_the_traceback(env: dict[str, str]) -> None:
    result = keep(env, "--debug", "get", "nope")
    assert result.returncode == 1
    assert "Traceback" in result.stderr.decode()


def test_without_keep_local_store_the_default_is_under_xdg_data_home(env: dict[str, str]) -> None:
    del env["KEEP_LOCAL_STORE"]
    result = keep(env, "put", "--blocks", "-", stdin=b"foo\n")
    assert result.returncode == 0, result.stderr
    path = Path(env["XDG_DATA_HOME"]) / "keepstore" / "blocks" / "d3b" / "d3b07384d113edec49eaa6238ad5ff00"
    assert hashlib.md5(path.read_bytes()).hexdigest() == "d3b07384d113edec49eaa6238ad5ff00"
    assert keep(env, "get", FOO_LOC).stdout == b"foo\n"


def test_version(env: dict[str, str]) -> None:
    result = keep(env, "--version")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"keepstore {keepstore.__version__}"


def test_usage_errors_exit_2_without_a_traceback(env: dict[str, str]) -> None:
    for args in ((), ("frobnicate",), ("get",), ("put",)):
        result = keep(env, *args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr.decode()
        assert "usage:" in result.stderr.decode()


def test_keep_config_shows_the_store_and_where_each_setting_came_from_without_the_token(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from keepstore.cli import main

    monkeypatch.setenv("KEEP_SERVICES", "http://127.0.0.1:25107 http://127.0.0.1:25108")
    monkeypatch.setenv("KEEP_TOKEN", "configShowSecret0123")
    assert main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert "configShowSecret0123" not in out
    report = json.loads(out)
    assert report["mode"] == "services"
    services = report["settings"]["services"]
    assert [url.rstrip("/") for url in services["value"]] == ["http://127.0.0.1:25107", "http://127.0.0.1:25108"]
    assert services["from"] == "environment KEEP_SERVICES"
    assert report["settings"]["token"] == {"value": "***", "from": "environment KEEP_TOKEN"}
    assert report["settings"]["copies"]["from"] == "default"


def test_keep_config_on_a_fresh_machine_names_the_default_local_store(capsys: pytest.CaptureFixture[str]) -> None:
    from keepstore.cli import main

    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "store: LocalStore at " in out and "keepstore/blocks" in out
    assert "token" in out and "(not set)" in out


def test_keep_config_lists_the_profiles_without_their_tokens_and_reports_a_broken_section(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import os

    from keepstore.cli import main

    config = Path(os.environ["XDG_CONFIG_HOME"]) / "keepstore" / "config.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("profiles:\n  archive:\n    services: http://127.0.0.1:25107 http://127.0.0.1:25108\n"
                      "    token: profileSecret0123456789\n    copies: 2\n  scratch:\n    local_store: blocks\n")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "profileSecret0123456789" not in out
    assert "profile archive: http://127.0.0.1:25107 http://127.0.0.1:25108 (copies 2; token from the profile)" in out
    assert f"profile scratch: LocalStore at {config.parent / 'blocks'}" in out
    assert main(["config", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["profiles"]) == {"archive", "scratch"} and report["profiles"]["archive"]["copies"] == 2

    config.write_text("profiles:\n  archive:\n    services: http://127.0.0.1:25107\n    copeis: 2\n")
    assert main(["config"]) == 1
    captured = capsys.readouterr()
    assert "line 4, profile 'archive', key 'copeis': unknown profile setting" in captured.err
    assert "store: " in captured.out  # the rest of the report is still shown
