"""Datasets from datasets: add_dataset / add_from by reference, `keep put --update ... --remove ...`."""

from __future__ import annotations

import json
import os
import re

import pytest
from transfer_helpers import SIGNING, Keep, make_keep, snapshot, write_tree

from keepstore.datasets import DatasetReader, DatasetWriter
from keepstore.datasets.receipt import DatasetError
from keepstore.locator import Locator

OLD = {"keep.txt": b"kept\n", "replace.txt": b"old content\n", "gone/x.bin": os.urandom(2000),
       "big.bin": os.urandom(300_000)}


@pytest.fixture
def keep_cli(keep_cluster_factory, monkeypatch, capsys, request) -> Keep:
    return make_keep(keep_cluster_factory, monkeypatch, capsys, request)


def listing(keep: Keep, loc: str) -> dict[str, bytes]:
    with keep.cluster.client() as client, DatasetReader(client, loc) as reader:
        return {mf.path: reader.read_bytes(mf.path) for mf in reader.files()}


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_update_uploads_only_the_new_bytes_plus_the_manifest(keep_cli, tmp_path):
    old = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "old", OLD))).strip()
    new_file = os.urandom(100_000)
    add = write_tree(tmp_path / "add", {"replace.txt": b"new content!\n", "sub/new.bin": new_file})
    keep_cli.forget()
    receipt = json.loads(keep_cli.ok("put", "--json", "--no-progress", "--update", old, "--remove", "gone",
                                     str(add)))
    puts = keep_cli.put_md5s()
    assert sorted(set(puts)) == sorted({Locator.parse(b["locator"]).md5 for b in receipt["blocks"] if b["sent"]}
                                       | {Locator.parse(receipt["locator"]).md5})
    assert len(puts) == 4  # one new data block and the manifest, two copies each
    new_bytes = len(new_file) + len(b"new content!\n")
    assert receipt["bytes_sent"] - receipt["manifest_block"]["size"] == new_bytes
    assert keep_cli.get_md5s() == [Locator.parse(old).md5]  # the old manifest only: no data moved
    assert listing(keep_cli, receipt["locator"]) == {"keep.txt": b"kept\n", "replace.txt": b"new content!\n",
                                                     "big.bin": OLD["big.bin"], "sub/new.bin": new_file}
    referenced = [b for b in receipt["blocks"] if not b["sent"]]
    assert referenced and all(b["replicas"] == 2 for b in referenced)


def test_remove_alone_and_a_missing_path(keep_cli, tmp_path):
    old = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "old", OLD))).strip()
    new = keep_cli.ok("put", "--no-progress", "--update", old, "--remove", "keep.txt").strip()
    assert set(listing(keep_cli, new)) == {"replace.txt", "gone/x.bin", "big.bin"}
    code, _out, err = keep_cli("put", "--update", old, "--remove", "nope.txt")
    assert code == 1 and "'nope.txt' is not in the dataset" in err
    with pytest.raises(SystemExit) as exit_:
        keep_cli("put", "--remove", "keep.txt", str(tmp_path / "old"))
    assert exit_.value.code == 2 and "--update" in keep_cli.capsys.readouterr().err


def test_add_dataset_and_add_from_move_no_data(keep_cluster, tmp_path):
    with keep_cluster.client() as client:
        w = DatasetWriter(client)
        w.add_bytes("a/one.txt", b"one")
        w.add_bytes("a/two.txt", b"two")
        w.add_bytes("b.txt", b"bee")
        first = w.finish()
        for s in keep_cluster.servers:
            s.requests.clear()
        combined = DatasetWriter(client)
        combined.add_dataset(first.locator, prefix="copy")
        with DatasetReader(client, first.locator) as reader:
            combined.add_from(reader, "a", "elsewhere")
            combined.add_from(reader, "b.txt")
        receipt = combined.finish()
        methods = sorted({r.method for s in keep_cluster.servers for r in s.requests})
        gets = [r for s in keep_cluster.servers for r in s.requests if r.method == "GET"]
        puts = [r for s in keep_cluster.servers for r in s.requests if r.method == "PUT"]
        assert methods == ["GET", "HEAD", "PUT"]
        assert {r.path.strip("/").split("+")[0] for r in gets} == {Locator.parse(first.locator).md5}
        assert {r.path.strip("/").split("+")[0] for r in puts} == {Locator.parse(receipt.locator).md5}
        with DatasetReader(client, receipt.locator) as reader:
            got = {mf.path: reader.read_bytes(mf.path) for mf in reader.files()}
    assert got == {"copy/a/one.txt": b"one", "copy/a/two.txt": b"two", "copy/b.txt": b"bee",
                   "elsewhere/one.txt": b"one", "elsewhere/two.txt": b"two", "b.txt": b"bee"}
    assert receipt.bytes_sent == receipt.manifest_block.size


def test_a_referenced_block_that_is_not_stored_fails_the_write(keep_cluster, tmp_path):
    with keep_cluster.client() as client:
        w = DatasetWriter(client)
        w.add_bytes("x", b"x" * 1000)
        first = w.finish()
        block = Locator.parse(first.blocks[0].locator).md5
        for server in keep_cluster.servers:
            for volume in server.volumes:
                found = volume.store.find(block)
                if found is not None:
                    os.unlink(found if isinstance(found, (str, os.PathLike)) else found.path)
        again = DatasetWriter(client)
        again.add_dataset(first.locator)
        with pytest.raises(DatasetError, match="not confirmed stored"):
            again.finish()


def test_update_replaces_a_directory_with_a_file_and_keeps_paths_unique(keep_cli, tmp_path):
    old = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "old", OLD))).strip()
    add = write_tree(tmp_path / "add", {"gone": b"now a file\n"})
    new = keep_cli.ok("put", "--no-progress", "--update", old, str(add)).strip()
    got = listing(keep_cli, new)
    assert got["gone"] == b"now a file\n" and "gone/x.bin" not in got
    dest = tmp_path / "out"
    keep_cli.ok("get", "--no-progress", new, str(dest))
    assert snapshot(dest)["gone"] == b"now a file\n"


def test_the_python_example_in_docs_datasets_md_runs(keep_cluster):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "add_dataset" in b]
    assert len(blocks) == 1
    with keep_cluster.client() as kc:
        w = DatasetWriter(kc)
        w.add_bytes("a/x.txt", b"x")
        w.add_bytes("b.txt", b"b")
        first = w.finish()
        scope = {"kc": kc, "first": first}
        exec(compile(blocks[0], "docs/datasets.md", "exec"), scope)
        with DatasetReader(kc, scope["second"].locator) as r:
            assert sorted(f.path for f in r.files()) == ["alpha/x.txt", "notes.txt", "v1/a/x.txt"]


def test_an_update_re_run_sends_nothing(keep_cli, tmp_path):
    old = keep_cli.ok("put", "--no-progress", str(write_tree(tmp_path / "old", OLD))).strip()
    add = write_tree(tmp_path / "add", {"sub/new.bin": os.urandom(50_000)})
    first = keep_cli.ok("put", "--no-progress", "--update", old, str(add)).strip()
    keep_cli.forget()
    again = keep_cli.ok("put", "--no-progress", "--update", old, str(add)).strip()
    assert again == first and keep_cli.put_md5s() == []
