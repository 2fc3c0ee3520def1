"""``keep put/get/ls/cat`` with datasets, run as ``python -m keepstore`` against a LocalStore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_processes import on_a_terminal, private_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return private_env(tmp_path, KEEP_LOCAL_STORE=str(tmp_path / "store"))


def keep(env, *args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, input=stdin,
                          capture_output=True, timeout=120)


def make_tree(root: Path) -> Path:
    (root / "sub dir" / "ü" / "empty").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "zero").write_bytes(b"")
    (root / "sub dir" / "b.bin").write_bytes(os.urandom(100_000))
    (root / "sub dir" / "ü" / "c").write_bytes(b"gamma")
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


def test_put_directory_prints_dataset_locator_last_and_get_writes_the_tree(env, tmp_path):
    src = make_tree(tmp_path / "src")
    put = keep(env, "put", str(src))
    assert put.returncode == 0, put.stderr
    loc = put.stdout.decode().splitlines()[-1]
    get = keep(env, "get", loc, str(tmp_path / "out"))
    assert get.returncode == 0, get.stderr
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_ls_lists_files_with_sizes(env, tmp_path):
    src = make_tree(tmp_path / "src")
    loc = keep(env, "put", str(src)).stdout.decode().split()[-1]
    ls = keep(env, "ls", "-l", loc)
    lines = ls.stdout.decode().splitlines()
    assert "      100000 sub dir/b.bin" in lines
    assert "           0 zero" in lines
    assert any(line.endswith("sub dir/ü/empty/") for line in lines)


def test_cat_and_get_of_one_file_inside_a_dataset(env, tmp_path):
    src = make_tree(tmp_path / "src")
    loc = keep(env, "put", str(src)).stdout.decode().split()[-1]
    assert keep(env, "cat", f"{loc}/sub dir/ü/c").stdout == b"gamma"
    out = tmp_path / "one"
    assert keep(env, "get", f"{loc}/a.txt", str(out)).returncode == 0
    assert out.read_bytes() == b"alpha\n"
    assert keep(env, "get", f"{loc}/a.txt").stdout == b"alpha\n"


def test_put_of_several_paths_keeps_each_under_its_name(env, tmp_path):
    src = make_tree(tmp_path / "src")
    (tmp_path / "lone").write_bytes(b"lone")
    loc = keep(env, "put", str(src), str(tmp_path / "lone")).stdout.decode().split()[-1]
    names = keep(env, "ls", loc).stdout.decode().splitlines()
    assert "lone" in names and "src/a.txt" in names


def test_put_stdin_with_name(env, tmp_path):
    loc = keep(env, "put", "--name", "data.csv", "-", stdin=b"x,y\n1,2\n").stdout.decode().split()[-1]
    assert keep(env, "cat", f"{loc}/data.csv").stdout == b"x,y\n1,2\n"


def test_put_json_receipt(env, tmp_path):
    src = make_tree(tmp_path / "src")
    result = keep(env, "put", "--json", str(src))
    receipt = json.loads(result.stdout)
    assert receipt["files"] == 4 and receipt["bytes"] == 6 + 100_000 + 5
    assert receipt["min_replicas"] == 1
    assert keep(env, "ls", receipt["locator"]).returncode == 0


def test_missing_file_in_dataset_is_one_clear_line(env, tmp_path):
    loc = keep(env, "put", str(make_tree(tmp_path / "src"))).stdout.decode().split()[-1]
    result = keep(env, "cat", f"{loc}/nope")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "Traceback" not in err and "nope" in err and len(err.splitlines()) == 1


def test_get_of_a_dataset_without_destination_is_refused(env, tmp_path):
    loc = keep(env, "put", str(make_tree(tmp_path / "src"))).stdout.decode().split()[-1]
    result = keep(env, "get", loc)
    assert result.returncode == 1 and "destination" in result.stderr.decode()


def test_get_of_a_plain_block_still_writes_the_block(env, tmp_path):
    loc = keep(env, "put", "--blocks", "-", stdin=b"plain bytes").stdout.decode().strip()
    assert keep(env, "get", loc).stdout == b"plain bytes"


def test_no_progress_output_when_stderr_is_not_a_terminal(env, tmp_path):
    result = keep(env, "put", str(make_tree(tmp_path / "src")))
    assert result.stderr == b""




def test_progress_bar_on_a_terminal_and_silenced_by_no_progress(env, tmp_path):
    src = make_tree(tmp_path / "src")
    code, out, shown = on_a_terminal(env, "put", str(src), columns=100)
    assert code == 0 and out.strip()
    assert "put:" in shown and "B/s" in shown, shown[-500:]  # a tqdm bar, sized to the input
    code, out, shown = on_a_terminal(env, "put", "--no-progress", str(src), columns=100)
    assert code == 0 and out.strip() and shown == ""


def test_user_errors_from_the_dataset_writer_are_one_line_not_a_traceback(env, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"1")
    (tmp_path / "b" / "f").write_bytes(b"2")
    result = keep(env, "put", "--name", "..", str(tmp_path / "a" / "f"))
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.decode().strip().startswith("keep: error: invalid dataset path")


def test_get_of_one_file_writes_it_with_the_usual_mode(env, tmp_path):
    src = make_tree(tmp_path / "src")
    loc = keep(env, "put", str(src)).stdout.decode().strip().splitlines()[-1]
    old = os.umask(0o022)
    try:
        result = keep(env, "get", f"{loc}/a.txt", str(tmp_path / "a.txt"))
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
