"""--json and --dry-run: the documented shapes, and a dry run that sends and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_processes import private_env

from keepstore.cli.selection import Plan
from keepstore.locator import MAX_BLOCK_SIZE, Locator


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return private_env(tmp_path, KEEP_LOCAL_STORE=str(tmp_path / "store"))


@pytest.fixture
def server_env(keep_server, tmp_path: Path) -> dict[str, str]:
    from keepstore.testing import DEFAULT_SYSTEM_TOKEN

    base = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    base.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
                XDG_CACHE_HOME=str(tmp_path / "cache"), KEEP_SERVICES=keep_server.url,
                KEEP_TOKEN=DEFAULT_SYSTEM_TOKEN)
    return base


def keep(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, input=stdin,
                          capture_output=True, timeout=120)


def keep_json(env: dict[str, str], *args: str, stdin: bytes = b"", code: int = 0) -> dict:
    result = keep(env, *args, stdin=stdin)
    assert result.returncode == code, result.stderr
    return json.loads(result.stdout)


def make_tree(root: Path) -> Path:
    (root / "d" / "empty").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "d" / "b.bin").write_bytes(os.urandom(5000))
    return root


def test_blocks_count_packed_bytes():
    assert [Plan.blocks_for(n) for n in (0, 1, MAX_BLOCK_SIZE, MAX_BLOCK_SIZE + 1)] == [0, 1, 1, 2]


def test_put_dry_run_lists_what_would_be_stored_and_sends_nothing(keep_server, server_env, tmp_path):
    src = make_tree(tmp_path / "src")
    plan = keep_json(server_env, "put", "--dry-run", "--json", str(src))
    assert len(keep_server.requests) == 0
    assert {k: plan[k] for k in ("dry_run", "files", "directories", "bytes", "blocks")} == \
        {"dry_run": True, "files": 2, "directories": 2, "bytes": 5006, "blocks": 1}
    assert plan["entries"] == [
        {"path": "a.txt", "source": str(src / "a.txt"), "size": 6, "kind": "file"},
        {"path": "d", "source": None, "size": None, "kind": "directory"},
        {"path": "d/b.bin", "source": str(src / "d" / "b.bin"), "size": 5000, "kind": "file"},
        {"path": "d/empty", "source": None, "size": None, "kind": "directory"},
    ]
    assert plan["left_out"] == {"symlinks": [], "loops": [], "special": [], "excluded": 0}


def test_put_dry_run_of_stdin_counts_it(env):
    plan = keep_json(env, "put", "-n", "--json", "-", stdin=b"x" * 1234)
    assert (plan["files"], plan["bytes"], plan["entries"][0]["path"], plan["entries"][0]["size"]) == \
        (1, 1234, "stdin", 1234)


def test_put_dry_run_text_ends_with_the_totals(env, tmp_path):
    result = keep(env, "put", "--dry-run", str(make_tree(tmp_path / "src")))
    assert result.returncode == 0
    assert result.stdout.decode().splitlines()[-1] == \
        "would store 2 files, 4.89 KiB (5006 bytes) in 1 data block and a manifest block; nothing sent"
    assert not (tmp_path / "store").exists()  # the store was never opened


def test_put_blocks_dry_run_gives_the_locators_put_would_print(env, tmp_path):
    (tmp_path / "f").write_bytes(b"one block")
    planned = keep_json(env, "put", "--blocks", "--dry-run", "--json", str(tmp_path / "f"))
    assert planned["blocks"] == [{"source": str(tmp_path / "f"), "locator": str(Locator.for_data(b"one block")),
                                  "size": 9}]
    assert keep(env, "head", planned["blocks"][0]["locator"]).returncode == 3  # not stored
    real = keep(env, "put", "--blocks", str(tmp_path / "f")).stdout.decode().strip()
    assert Locator.parse(real).bare() == Locator.parse(planned["blocks"][0]["locator"]).bare()


def test_get_dry_run_says_what_would_be_written_and_writes_nothing(keep_server, server_env, tmp_path):
    src = make_tree(tmp_path / "src")
    loc = keep(server_env, "put", "--copies", "1", str(src)).stdout.decode().strip()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_bytes(b"old")
    before = len(keep_server.requests)
    plan = keep_json(server_env, "get", "--dry-run", "--json", loc, str(tmp_path / "out"))
    assert [r.method for r in list(keep_server.requests)[before:]] == ["GET"]  # the manifest only
    assert (plan["dry_run"], plan["files"], plan["bytes"], plan["directories"]) == (True, 2, 5006, 2)
    assert plan["entries"] == [
        {"path": "a.txt", "dest": str(tmp_path / "out" / "a.txt"), "size": 6, "exists": True},
        {"path": "d/b.bin", "dest": str(tmp_path / "out" / "d" / "b.bin"), "size": 5000, "exists": False},
    ]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.txt"]
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"old"


def test_get_json_reports_what_was_written(env, tmp_path):
    src = make_tree(tmp_path / "src")
    loc = keep(env, "put", str(src)).stdout.decode().strip()
    report = keep_json(env, "get", "--json", f"{loc}/d", str(tmp_path / "out"))
    assert (report["dry_run"], report["files"], report["bytes"]) == (False, 1, 5000)
    assert report["entries"] == [{"path": "b.bin", "dest": str(tmp_path / "out" / "b.bin"), "size": 5000}]
    assert (tmp_path / "out" / "b.bin").read_bytes() == (src / "d" / "b.bin").read_bytes()


def test_get_json_to_stdout_is_refused_because_stdout_holds_the_report(env, tmp_path):
    loc = keep(env, "put", str(make_tree(tmp_path / "src"))).stdout.decode().strip()
    result = keep(env, "get", "--json", f"{loc}/a.txt")
    assert result.returncode == 1 and b"--json" in result.stderr and result.stdout == b""


def test_ls_json_lists_files_and_directories_with_types_and_sizes(env, tmp_path):
    loc = keep(env, "put", str(make_tree(tmp_path / "src"))).stdout.decode().strip()
    listing = keep_json(env, "ls", "--json", loc)
    assert listing == {"target": loc, "entries": [
        {"path": "a.txt", "type": "file", "size": 6},
        {"path": "d/b.bin", "type": "file", "size": 5000},
        {"path": "d", "type": "directory", "size": None, "empty": False},
        {"path": "d/empty", "type": "directory", "size": None, "empty": True},
    ]}
    assert keep_json(env, "ls", "--json", f"{loc}/a.txt")["entries"] == [{"path": "a.txt", "type": "file", "size": 6}]


def test_head_json_reports_presence_with_the_usual_exit_codes(env):
    loc = keep(env, "put", "--blocks", "-", stdin=b"here").stdout.decode().strip()
    assert keep_json(env, "head", "--json", loc) == {"locator": loc, "present": True}
    absent = str(Locator.for_data(b"not here"))
    assert keep_json(env, "head", "--json", absent, code=3) == {"locator": absent, "present": False}


def test_put_json_receipt_names_the_dataset(env, tmp_path):
    receipt = keep_json(env, "put", "--json", str(make_tree(tmp_path / "src")))
    assert (receipt["files"], receipt["bytes"], len(receipt["blocks"])) == (2, 5006, 1)
    assert keep(env, "ls", receipt["locator"]).stdout.decode().splitlines() == ["a.txt", "d/b.bin", "d/empty/"]


def test_get_dry_run_of_one_file_to_stdout_writes_no_data(env, tmp_path):
    loc = keep(env, "put", str(make_tree(tmp_path / "src"))).stdout.decode().strip()
    result = keep(env, "get", "--dry-run", f"{loc}/a.txt")
    assert result.returncode == 0
    assert result.stdout.decode().splitlines() == ["           6 -",
                                                   "would write 1 file, 6 B (6 bytes), to stdout; nothing written"]


def test_put_dry_run_with_update_says_which_dataset_it_builds_on(env, tmp_path):
    base = keep(env, "put", str(make_tree(tmp_path / "src"))).stdout.decode().strip()
    (tmp_path / "new.txt").write_bytes(b"new")
    plan = keep_json(env, "put", "-n", "--json", "--update", base, "--remove", "a.txt", str(tmp_path / "new.txt"))
    assert (plan["update"], plan["remove"], plan["files"], plan["bytes"]) == (base, ["a.txt"], 1, 3)
    text = keep(env, "put", "-n", "--update", base, "--remove", "a.txt", str(tmp_path / "new.txt"))
    assert text.stdout.decode().splitlines()[-1].endswith(f"on top of the files of {base} less 1 removed; nothing sent")
