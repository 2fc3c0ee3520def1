"""``%keep`` driven through a real IPython InteractiveShell, over a LocalStore and a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from keepstore import LocalStore
from keepstore.datasets import DatasetReader
from keepstore.testing import KeepCluster


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "keepstore.ipython")
    ip.run_line_magic("keep", f"use --local {tmp_path / 'store'}")
    yield ip
    ip.run_line_magic("unload_ext", "keepstore.ipython")


def run(shell: InteractiveShell, cell: str) -> Any:
    result = shell.run_cell(cell)
    result.raise_error()
    return result.result


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "a.csv").write_text("x,y\n1,2\n")
    (d / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    return d


def test_put_returns_the_locator_of_a_new_dataset(shell: InteractiveShell, src: Path, tmp_path: Path) -> None:
    run(shell, f"loc = %keep put {src}")
    loc = shell.user_ns["loc"]
    reader = DatasetReader(LocalStore(tmp_path / "store"), loc)
    assert sorted(f.path for f in reader.files()) == ["a.csv", "sub/b.bin"]


def test_get_returns_a_files_bytes(shell: InteractiveShell, src: Path) -> None:
    run(shell, f"loc = %keep put {src}")
    assert run(shell, "%keep get {loc}/sub/b.bin") == (src / "sub" / "b.bin").read_bytes()
    run(shell, "data = %keep get $loc/a.csv")
    assert shell.user_ns["data"] == b"x,y\n1,2\n"


def test_get_of_a_plain_block_returns_its_bytes(shell: InteractiveShell, tmp_path: Path) -> None:
    block = LocalStore(tmp_path / "store").put(b"plain block")
    assert run(shell, f"%keep get {block}") == b"plain block"


def test_get_with_a_destination_writes_the_tree(shell: InteractiveShell, src: Path, tmp_path: Path) -> None:
    run(shell, f"loc = %keep put {src}")
    out = tmp_path / "out"
    assert run(shell, f"%keep get {{loc}} {out}") == str(out)
    assert (out / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()


def test_ls_assigns_a_list_of_paths(shell: InteractiveShell, src: Path) -> None:
    run(shell, f"loc = %keep put {src}")
    run(shell, "x = %keep ls {loc}")
    assert shell.user_ns["x"] == ["a.csv", "sub/b.bin"]
    assert run(shell, "%keep ls {loc}/sub -l") == [(25600, "sub/b.bin")]


def test_errors_are_one_clear_usage_error(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result = shell.run_cell("%keep get " + "0" * 32 + "+3")
    assert result.error_in_exec is not None
    assert "keep: error:" in str(result.error_in_exec)
    result = shell.run_cell("%keep frobnicate")
    assert "invalid choice" in str(result.error_in_exec)
    result = shell.run_cell("%keep get 'unclosed")  # shlex's ValueError, as a usage error
    assert type(result.error_in_exec).__name__ == "UsageError" and "keep: error:" in str(result.error_in_exec)


def test_help_lists_the_verbs(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell("%keep")
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("put", "get", "ls", "use"))


def test_use_points_the_magic_at_a_cluster_without_showing_the_token(
    shell: InteractiveShell, keep_cluster: KeepCluster, src: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KEEP_TOKEN", keep_cluster.token)
    run(shell, f"%keep use {' '.join(keep_cluster.urls)}")
    assert keep_cluster.token not in capsys.readouterr().out
    run(shell, f"loc = %keep put {src / 'a.csv'} --copies 2")
    loc = shell.user_ns["loc"]
    with keep_cluster.client() as client:
        assert DatasetReader(client, loc).read_bytes("a.csv") == b"x,y\n1,2\n"
    assert run(shell, "%keep get {loc}/a.csv") == b"x,y\n1,2\n"


def test_without_use_the_magic_uses_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path) -> None:
    monkeypatch.setenv("KEEP_LOCAL_STORE", str(tmp_path / "env-store"))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "keepstore.ipython")
    try:
        run(ip, f"loc = %keep put {src}")
        DatasetReader(LocalStore(tmp_path / "env-store"), ip.user_ns["loc"])
    finally:
        ip.run_line_magic("unload_ext", "keepstore.ipython")


def test_the_docs_example_cells_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from keepstore.contrib.fsspec import KeepFileSystem

    text = (Path(__file__).resolve().parents[2] / "docs" / "jupyter.md").read_text()
    cells = text.split("## Example", 1)[1].split("```ipython\n", 1)[1].split("```", 1)[0].splitlines()
    monkeypatch.chdir(tmp_path)
    KeepFileSystem.clear_instance_cache()
    ip = InteractiveShell.instance()
    try:
        for cell in cells:
            run(ip, cell)
    finally:
        ip.run_line_magic("unload_ext", "keepstore.ipython")
        KeepFileSystem.clear_instance_cache()
    assert ip.user_ns["files"] == ["metrics.csv"]
