"""`keep get` never clobbers silently: refuse, --force, --skip-existing, --verify-existing, re-run after a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from transfer_helpers import SIGNING, Keep, make_keep, snapshot, write_tree

from keepstore.client import HedgePolicy
from keepstore.datasets import DatasetWriter
from keepstore.datasets.existing import ExistingFileError, ExistingPolicy, file_matches, plan_extract
from keepstore.datasets.reader import DatasetReader
from keepstore.locator import Locator


@pytest.fixture
def keep_cli(keep_cluster_factory, monkeypatch, capsys, request) -> Keep:
    return make_keep(keep_cluster_factory, monkeypatch, capsys, request)



FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n", "sub/c.bin": os.urandom(5000)}


def put_tree(keep: Keep, tmp_path: Path) -> str:
    src = write_tree(tmp_path / "src", FILES)
    return keep.ok("put", "--no-progress", str(src)).strip()


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob(".keep-*")]


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_get_refuses_an_existing_file_naming_it_and_writes_nothing(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    dest = write_tree(tmp_path / "dest", {"b.txt": b"mine"})
    code, _out, err = keep_cli("get", "--no-progress", loc, str(dest))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(dest / "b.txt") in lines[0] and "already exists" in lines[0]
    assert snapshot(dest) == {"b.txt": b"mine"}  # a.txt (sorted first) was not written either
    assert not (dest / "sub").exists() and no_temp_files(dest)


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_force_overwrites(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    dest = write_tree(tmp_path / "dest", {"b.txt": b"mine", "a.txt": b"x" * 100})
    keep_cli.ok("get", "--no-progress", "--force", loc, str(dest))
    assert snapshot(dest) == FILES


def test_skip_existing_keeps_files_of_the_right_size_and_replaces_the_others(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    same_size = b"BRAVO BRAVO\n"  # as long as b.txt: kept, although different
    dest = write_tree(tmp_path / "dest", {"b.txt": same_size, "a.txt": b"too long for a.txt\n"})
    keep_cli.ok("get", "--no-progress", "--skip-existing", loc, str(dest))
    assert snapshot(dest) == {**FILES, "b.txt": same_size}


def test_skip_existing_on_a_complete_copy_fetches_no_data_block(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    dest = tmp_path / "dest"
    keep_cli.ok("get", "--no-progress", loc, str(dest))
    keep_cli.forget()
    keep_cli.ok("get", "--no-progress", "--skip-existing", loc, str(dest))
    assert keep_cli.get_md5s() == [Locator.parse(loc).md5]  # the manifest only
    assert snapshot(dest) == FILES


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_verify_existing_keeps_matching_files_and_replaces_same_size_impostors(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    dest = tmp_path / "dest"
    keep_cli.ok("get", "--no-progress", loc, str(dest))
    (dest / "b.txt").write_bytes(b"BRAVO BRAVO\n")
    inode_a = (dest / "a.txt").stat().st_ino
    keep_cli.ok("get", "--no-progress", "--verify-existing", loc, str(dest))
    assert snapshot(dest) == FILES
    assert (dest / "a.txt").stat().st_ino == inode_a  # kept, not rewritten
    assert no_temp_files(dest)


def test_the_three_policies_exclude_each_other(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    with pytest.raises(SystemExit) as exc:
        keep_cli("get", "--force", "--skip-existing", loc, str(tmp_path / "d"))
    assert exc.value.code == 2


def test_a_directory_where_a_file_goes_is_refused_even_with_force(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    dest = tmp_path / "dest"
    (dest / "a.txt").mkdir(parents=True)
    code, _out, err = keep_cli("get", "--no-progress", "--force", loc, str(dest))
    assert code == 1 and "is a directory" in err
    assert not (dest / "b.txt").exists()


def test_one_file_and_a_plain_block_follow_the_same_rules(keep_cli, tmp_path):
    loc = put_tree(keep_cli, tmp_path)
    target = tmp_path / "one.txt"
    target.write_bytes(b"mine")
    code, _out, err = keep_cli("get", "--no-progress", f"{loc}/a.txt", str(target))
    assert code == 1 and "already exists" in err and target.read_bytes() == b"mine"
    keep_cli.ok("get", "--no-progress", "-f", f"{loc}/a.txt", str(target))
    assert target.read_bytes() == b"alpha\n"

    block = keep_cli.ok("put", "--blocks", str(tmp_path / "src" / "b.txt")).strip()
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"X" * len(FILES["b.txt"]))
    code, _out, err = keep_cli("get", block, str(raw))
    assert code == 1 and "already exists" in err
    keep_cli.ok("get", "--verify-existing", block, str(raw))  # same size, wrong md5: replaced
    assert raw.read_bytes() == FILES["b.txt"]
    inode = raw.stat().st_ino
    keep_cli.ok("get", "--verify-existing", block, str(raw))  # right md5: kept, not rewritten
    assert raw.stat().st_ino == inode


def test_an_interrupted_get_re_run_with_skip_existing_fetches_only_what_is_missing(keep_cli, tmp_path):
    # One block per file, so that a block that cannot be read fails one file only.
    with keep_cli.cluster.client() as client:
        writer = DatasetWriter(client, block_size=4096)
        for name in ("a", "b", "c", "d"):
            writer.add_bytes(name, bytes([ord(name)]) * 4096)
        receipt = writer.finish()
    c_block = Locator.parse(receipt.blocks[2].locator).md5
    for server in keep_cli.cluster.servers:
        server.faults.fail(404, times=None, methods="GET", block=c_block)
    dest = tmp_path / "dest"
    code, _out, err = keep_cli("get", "--no-progress", receipt.locator, str(dest))
    assert code == 3, err  # not found
    done = snapshot(dest)
    assert "c" not in done and no_temp_files(dest)
    assert set(done) <= {"a", "b", "d"}
    keep_cli.cluster.clear_faults()
    keep_cli.forget()
    keep_cli.ok("get", "--no-progress", "--skip-existing", receipt.locator, str(dest))
    fetched = set(keep_cli.get_md5s()) - {Locator.parse(receipt.locator).md5}
    missing = {Locator.parse(receipt.blocks["abcd".index(n)].locator).md5 for n in "abcd" if n not in done}
    assert fetched == missing
    assert snapshot(dest) == {n: bytes([ord(n)]) * 4096 for n in "abcd"}


def test_verify_checks_whole_blocks_by_md5_without_fetching_them(keep_cluster, tmp_path):
    # Hedging off: the GETs are counted, and a hedge (a busy machine's slow first byte) adds one.
    with keep_cluster.client(hedge=HedgePolicy(enabled=False)) as client:
        writer = DatasetWriter(client, block_size=4096)
        writer.add_bytes("whole", os.urandom(8192))  # exactly two blocks
        writer.add_bytes("packed1", b"one")  # these two share one block
        writer.add_bytes("packed2", b"two")
        receipt = writer.finish()
        reader = DatasetReader(client, receipt.locator)
        dest = tmp_path / "dest"
        reader.extract(dest)
        reader.close()
        reader = DatasetReader(client, receipt.locator)  # a cold cache: what a new `keep get` has
        for server in keep_cluster.servers:
            server.requests.clear()
        assert plan_extract(reader.manifest, dest, ExistingPolicy.VERIFY, reader.blocks) == {
            "whole", "packed1", "packed2"}
        gets = [r.path for s in keep_cluster.servers for r in s.requests if r.method == "GET"]
        packed = Locator.parse(receipt.blocks[-1].locator).md5
        assert [p.strip("/").split("+")[0] for p in gets] == [packed]  # the shared block, once
        # One changed byte in a whole block is found without fetching anything.
        data = bytearray((dest / "whole").read_bytes())
        data[5000] ^= 1
        (dest / "whole").write_bytes(bytes(data))
        assert not file_matches(str(dest / "whole"), reader.manifest.file("whole"), None)
        assert plan_extract(reader.manifest, dest, ExistingPolicy.VERIFY, reader.blocks) == {"packed1", "packed2"}
        with pytest.raises(ExistingFileError, match="packed1"):
            plan_extract(reader.manifest, dest, ExistingPolicy.REFUSE, reader.blocks)
        reader.close()
