"""Blocks already stored with enough replicas are not sent again, and receipts say so honestly."""

from __future__ import annotations

import json
import os

import pytest
from transfer_helpers import SIGNING, Keep, make_keep, write_tree

from keepstore.datasets import DatasetWriter
from keepstore.datasets.stored import StoredCheck
from keepstore.locator import Locator

FILES = {"a.txt": b"alpha\n", "dir/b.bin": os.urandom(3000), "dir/c.bin": os.urandom(70_000)}


@pytest.fixture
def keep_cli(keep_cluster_factory, monkeypatch, capsys, request) -> Keep:
    return make_keep(keep_cluster_factory, monkeypatch, capsys, request)


def test_a_re_put_without_resume_state_sends_no_block_body(keep_cli, tmp_path):
    src = write_tree(tmp_path / "src", FILES)
    first = json.loads(keep_cli.ok("put", "--json", "--no-resume", "--copies", "2", str(src)))
    assert first["bytes_sent"] > sum(len(v) for v in FILES.values()) and first["bytes_skipped"] == 0
    keep_cli.forget()
    again = json.loads(keep_cli.ok("put", "--json", "--no-resume", "--copies", "2", str(src)))
    assert keep_cli.put_md5s() == []
    assert again["locator"] == first["locator"]
    assert again["bytes_sent"] == 0 and again["bytes_skipped"] == first["bytes_sent"]
    for block in [*again["blocks"], again["manifest_block"]]:
        assert block["sent"] is False and block["replicas"] == 2
        holders = {keep_cli.cluster.urls[i] for i in keep_cli.cluster.holders(block["locator"])}
        assert set(block["services"]) <= holders and len(block["services"]) == 2


def test_heads_go_in_probe_order_and_stop_once_the_copies_are_confirmed(keep_cli, tmp_path):
    src = write_tree(tmp_path / "src", FILES)
    keep_cli.ok("put", "--no-resume", "--copies", "2", str(src))
    keep_cli.forget()
    receipt = json.loads(keep_cli.ok("put", "--json", "--no-resume", "--copies", "2", str(src)))
    heads = [r.path.strip("/").split("+")[0] for r in keep_cli.requests("HEAD")]
    for block in [*receipt["blocks"], receipt["manifest_block"]]:
        assert heads.count(Locator.parse(block["locator"]).md5) == 2  # two confirmations; the third never asked


def test_a_block_with_too_few_replicas_is_sent(keep_cli, tmp_path):
    src = write_tree(tmp_path / "src", FILES)
    keep_cli.ok("put", "--no-resume", "--copies", "1", str(src))
    keep_cli.forget()
    receipt = json.loads(keep_cli.ok("put", "--json", "--no-resume", "--copies", "3", str(src)))
    assert receipt["min_replicas"] == 3 and receipt["bytes_skipped"] == 0
    assert all(b["sent"] for b in receipt["blocks"])
    assert len(keep_cli.put_md5s()) >= 2 * len(receipt["blocks"])  # at least the two replicas missing, per block


def test_storage_classes_are_never_taken_on_trust_from_a_head(keep_cli, tmp_path):
    src = write_tree(tmp_path / "src", FILES)
    keep_cli.ok("put", "--no-resume", str(src))
    keep_cli.forget()
    receipt = json.loads(keep_cli.ok("put", "--json", "--no-resume", "--storage-classes", "default", str(src)))
    assert receipt["bytes_skipped"] == 0 and keep_cli.put_md5s()


@pytest.mark.parametrize("keep_cli", SIGNING[1:], indirect=True)
def test_where_unsigned_heads_are_refused_only_signed_locators_skip(keep_cli, tmp_path):
    src = write_tree(tmp_path / "src", FILES)
    first = json.loads(keep_cli.ok("put", "--json", "--no-resume", str(src)))
    keep_cli.forget()
    again = json.loads(keep_cli.ok("put", "--json", "--no-resume", str(src)))
    assert again["bytes_skipped"] == 0 and keep_cli.put_md5s()  # no state: nothing signed to check with
    heads = keep_cli.requests("HEAD")
    # The first block's first batch (two HEADs, one per copy wanted) is refused; no more are sent.
    assert len(heads) == 2 and {h.status for h in heads} == {400} and len({h.path for h in heads}) == 1
    with keep_cli.cluster.client() as client:
        signed = {Locator.parse(b["locator"]).md5: Locator.parse(b["locator"]) for b in first["blocks"]}
        check = StoredCheck(client, signed=signed)
        writer = DatasetWriter(client, skip_stored=check)
        writer.add_tree(src)
        keep_cli.forget()
        receipt = writer.finish()
        check.close()
    assert {b.locator for b in receipt.blocks} == {b["locator"] for b in first["blocks"]}
    assert all(not b.sent for b in receipt.blocks) and receipt.manifest_block.sent
    assert keep_cli.put_md5s() == [Locator.parse(receipt.locator).md5] * 2  # the manifest only (new signatures)


def test_the_writer_skips_on_a_local_store_too(keep_local_store):
    first = DatasetWriter(keep_local_store, copies=1)
    first.add_bytes("x", b"x" * 100)
    r1 = first.finish()
    second = DatasetWriter(keep_local_store, copies=1)
    second.add_bytes("x", b"x" * 100)
    r2 = second.finish()
    assert r2.locator == r1.locator and r2.bytes_sent == 0 and r2.bytes_skipped == r1.bytes_sent


@pytest.mark.filterwarnings("ignore:LocalStore.*keeps one copy")  # the first put's ReplicationWarning
def test_a_local_store_resumes_and_skips_whatever_copies_are_asked_for(tmp_path, monkeypatch, capsys):
    from keepstore.cli import main

    monkeypatch.setenv("KEEP_LOCAL_STORE", str(tmp_path / "store"))
    src = write_tree(tmp_path / "src", FILES)
    assert main(["put", "--json", "--copies", "2", str(src)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["put", "--json", "--copies", "2", str(src)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["locator"] == first["locator"] and again["bytes_sent"] == 0
    assert all(b["replicas"] == 1 and not b["sent"] for b in again["blocks"])
