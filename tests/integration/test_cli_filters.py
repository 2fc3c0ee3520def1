"""keep put --exclude/--include and the symbolic-link policy: what is stored, what is left out, and no loops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_processes import private_env

from keepstore.cli.selection import Filter, plan_put
from keepstore.datasets import DatasetWriter
from keepstore.local import LocalStore


def rules(*pairs: str) -> Filter:
    """``rules("-*.tmp", "+keep.tmp")``: - for --exclude, + for --include."""
    return Filter.of(("include" if p[0] == "+" else "exclude", p[1:]) for p in pairs)


# -- the rules -------------------------------------------------------------------------------------


def test_a_pattern_without_slash_matches_the_name_at_any_depth():
    f = rules("-*.tmp")
    assert not f.keeps_file("a.tmp") and not f.keeps_file("x/y/b.tmp") and f.keeps_file("tmp/a.txt")


def test_a_pattern_with_slash_matches_the_whole_relative_path():
    f = rules("-logs/*.log")
    assert not f.keeps_file("logs/a.log") and f.keeps_file("old/logs/a.log") and f.keeps_file("a.log")
    assert not rules("-/top.txt").keeps_file("top.txt") and rules("-/top.txt").keeps_file("sub/top.txt")


def test_a_trailing_slash_matches_directories_only():
    f = rules("-build/")
    assert not f.searches_dir("build") and not f.searches_dir("src/build") and f.keeps_file("build")


def test_the_last_matching_rule_wins():
    f = rules("-*.tmp", "+keep.tmp")
    assert f.keeps_file("keep.tmp") and not f.keeps_file("other.tmp")
    assert not rules("+keep.tmp", "-*.tmp").keeps_file("keep.tmp")


def test_a_first_include_stores_only_what_an_include_matches_and_still_searches_directories():
    f = rules("+*.csv")
    assert f.keeps_file("d/e/x.csv") and not f.keeps_file("x.txt")
    assert f.searches_dir("d") and not f.records_dir("d")


def test_patterns_are_case_sensitive():
    assert rules("-*.TMP").keeps_file("a.tmp")


def test_an_empty_pattern_is_refused():
    with pytest.raises(ValueError, match="empty --exclude pattern"):
        rules("-/")


# -- the plan: the same order as before, so the same dataset ----------------------------------------


def make_tree(root: Path) -> Path:
    (root / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    (root / "z.tmp").write_bytes(b"scratch")
    (root / "b" / "one").write_bytes(os.urandom(3000))
    (root / "b" / "c" / "two.tmp").write_bytes(b"two")
    (root / "b" / "c" / "three.csv").write_bytes(b"3,3")
    return root


def test_without_rules_or_links_the_plan_stores_what_add_tree_stored(tmp_path):
    src = make_tree(tmp_path / "src")
    store = LocalStore(tmp_path / "store")
    with DatasetWriter(store) as w:
        w.add_tree(src)
        expected = w.finish().locator
    plan = plan_put([str(src)])
    with DatasetWriter(store) as w:
        for e in plan.entries:
            if e.kind == "directory":
                w.add_directory(e.path)
            else:
                assert e.source is not None
                w.add_file(e.source, e.path)
        assert w.finish().locator == expected


def test_an_excluded_directory_is_not_searched(tmp_path):
    src = make_tree(tmp_path / "src")
    plan = plan_put([str(src)], rules=rules("-b/", "+three.csv"))
    assert [e.path for e in plan.entries] == ["a.txt", "z.tmp", "empty"]
    assert plan.excluded == 1


# -- through the real command ------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return private_env(tmp_path, KEEP_LOCAL_STORE=str(tmp_path / "store"))


def keep(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def stored_paths(env: dict[str, str], put: subprocess.CompletedProcess[str]) -> list[str]:
    assert put.returncode == 0, put.stderr
    ls = keep(env, "ls", put.stdout.strip())
    assert ls.returncode == 0, ls.stderr
    return ls.stdout.splitlines()


def blocks_in(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file() and len(p.name) >= 32] if store.exists() else []


def test_exclude_and_include_choose_what_put_stores(env, tmp_path):
    src = make_tree(tmp_path / "src")
    put = keep(env, "put", "--exclude", "*.tmp", "--exclude", "empty/", str(src))
    assert stored_paths(env, put) == ["a.txt", "b/c/three.csv", "b/one"]
    put = keep(env, "put", "--include", "*.csv", str(src))
    assert stored_paths(env, put) == ["b/c/three.csv"]


def test_a_symlink_inside_a_directory_is_left_out_with_one_notice(env, tmp_path):
    src = make_tree(tmp_path / "src")
    outside = tmp_path / "secret"
    outside.write_text("not for the dataset")
    (src / "link").symlink_to(outside)
    (src / "b" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    put = keep(env, "put", str(src))
    assert "link" not in "\n".join(stored_paths(env, put))
    notices = put.stderr.splitlines()
    assert len(notices) == 1 and "2 symbolic links not followed" in notices[0] and "--follow-links" in notices[0]


def test_follow_links_stores_what_the_link_points_to(env, tmp_path):
    src = make_tree(tmp_path / "src")
    (tmp_path / "target.txt").write_text("pointed at")
    (src / "link").symlink_to(tmp_path / "target.txt")
    put = keep(env, "put", "--follow-links", str(src))
    assert "link" in stored_paths(env, put)
    assert keep(env, "cat", f"{put.stdout.strip()}/link").stdout == "pointed at"


def test_a_symlink_cycle_ends_with_a_notice_instead_of_looping(env, tmp_path):
    src = make_tree(tmp_path / "src")
    (src / "b" / "c" / "up").symlink_to(src, target_is_directory=True)
    (src / "b" / "self").symlink_to(".", target_is_directory=True)
    put = keep(env, "--debug", "put", "--follow-links", str(src))
    paths = stored_paths(env, put)
    assert "b/c/three.csv" in paths and not any("up/" in p or "self/" in p for p in paths)
    assert "2 symbolic link loops" in put.stderr


def test_a_dangling_link_is_an_error_when_following_and_nothing_is_stored(env, tmp_path):
    src = make_tree(tmp_path / "src")
    (src / "broken").symlink_to(tmp_path / "nowhere")
    put = keep(env, "put", "--follow-links", str(src))
    assert put.returncode == 1 and "broken" in put.stderr and "dangling" in put.stderr
    assert blocks_in(tmp_path / "store") == []
    assert keep(env, "put", str(src)).returncode == 0  # without following it is just left out
    assert blocks_in(tmp_path / "store") != []  # (so the check above could see blocks)


def test_a_symlink_named_on_the_command_line_is_followed(env, tmp_path):
    src = make_tree(tmp_path / "src")
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)
    put = keep(env, "put", str(tmp_path / "alias"))
    assert "b/one" in stored_paths(env, put) and put.stderr == ""


def test_a_fifo_inside_a_directory_is_left_out_rather_than_read(env, tmp_path):
    src = make_tree(tmp_path / "src")
    os.mkfifo(src / "pipe")
    put = keep(env, "put", str(src))  # reading the fifo would block until the timeout
    assert "pipe" not in stored_paths(env, put) and "1 special file" in put.stderr


def test_filters_with_blocks_are_refused_rather_than_ignored(env, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    put = keep(env, "put", "--blocks", "--exclude", "f", str(tmp_path / "f"))
    assert put.returncode == 1 and "--blocks stores only the files named" in put.stderr and put.stdout == ""
