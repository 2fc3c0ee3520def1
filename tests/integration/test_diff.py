"""`keep diff A B`: added, removed, changed and moved files, decided by content (segments), not names."""

from __future__ import annotations

import json
import os

import pytest
from transfer_helpers import Keep, make_keep, write_tree

from keepstore.datasets import DatasetReader, DatasetWriter
from keepstore.datasets.diff import content_key, diff_manifests
from keepstore.datasets.manifest import Manifest, Segment
from keepstore.locator import Locator

A = {"same.txt": b"same\n", "edit.txt": b"before\n", "old/name.bin": os.urandom(5000), "drop.txt": b"drop\n",
     "empty": b""}
B = {"same.txt": b"same\n", "edit.txt": b"after!!\n", "new/name.bin": A["old/name.bin"], "add.txt": b"add\n",
     "empty": b""}


@pytest.fixture
def keep_cli(keep_cluster_factory, monkeypatch, capsys, request) -> Keep:
    return make_keep(keep_cluster_factory, monkeypatch, capsys, request)


def test_keep_diff_lists_changes_by_content(keep_cli, tmp_path):
    # B made from A as a pipeline stage would: unchanged files keep their blocks.
    a = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "a", A))).strip()
    write_tree(tmp_path / "b", {"edit.txt": B["edit.txt"], "add.txt": B["add.txt"]})
    with keep_cli.cluster.client() as client:
        w = DatasetWriter(client)
        w.add_dataset(a)
        w.remove("drop.txt")
        with DatasetReader(client, a) as reader:
            w.add_from(reader, "old/name.bin", "new/name.bin")
        w.remove("old")
        w.remove("edit.txt")
        w.add_tree(tmp_path / "b")
        b = w.finish().locator
    assert keep_cli.ok("diff", a, b).splitlines() == [
        "A\tadd.txt", "D\tdrop.txt", "M\tedit.txt", "R\told/name.bin\tnew/name.bin"]
    report = json.loads(keep_cli.ok("diff", "--json", a, b))
    assert report["added"] == [{"path": "add.txt", "size": 4}]
    assert report["removed"] == [{"path": "drop.txt", "size": 5}]
    assert report["changed"] == [{"path": "edit.txt", "old_size": 7, "new_size": 8}]
    assert report["moved"] == [{"from": "old/name.bin", "to": "new/name.bin"}]
    assert report["unchanged"] == 2
    assert keep_cli.ok("diff", a, a) == ""


def test_independent_puts_differ_by_blocks_and_read_compares_their_bytes(keep_cli, tmp_path):
    a = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "a", A))).strip()
    b = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "b", B))).strip()
    by_blocks = keep_cli.ok("diff", a, b).splitlines()
    assert "M\tsame.txt" in by_blocks  # packed with other files into another block: cannot tell unread
    assert keep_cli.ok("diff", "--read", a, b).splitlines() == [
        "A\tadd.txt", "D\tdrop.txt", "M\tedit.txt", "R\told/name.bin\tnew/name.bin"]


def test_diff_of_directories_inside_datasets_and_bad_targets(keep_cli, tmp_path):
    a = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "a", A))).strip()
    b = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "b", B))).strip()
    assert keep_cli.ok("diff", "--read", f"{a}/old", f"{b}/new") == ""  # name.bin: same bytes, same name
    code, _out, err = keep_cli("diff", f"{a}/same.txt", b)
    assert code == 1 and "not a directory" in err
    block = keep_cli.ok("put", "--blocks", str(tmp_path / "a" / "same.txt")).strip()
    code, _out, err = keep_cli("diff", block, b)
    assert code == 1 and "plain block" in err


def test_the_same_bytes_in_one_segment_or_several_are_the_same_content():
    loc = Locator.for_data(b"0123456789")
    one = [Segment(loc, 2, 6)]
    two = [Segment(loc, 2, 3), Segment(loc, 5, 3)]
    assert content_key(one) == content_key(two)
    assert content_key([Segment(loc.with_hints("A" + "0" * 40 + "@6b21e3cd"), 2, 6)]) == content_key(one)
    assert content_key([Segment(loc, 3, 6)]) != content_key(one)
    a = Manifest.from_files({"f": one})
    b = Manifest.from_files({"f": two, "g": [Segment(loc, 0, 10)]})
    d = diff_manifests(a, b)
    assert d.unchanged == 1 and d.added == (("g", 10),) and not d.changed and not d.moved
