"""keep copy: a dataset goes between a local store and keep serve clusters, sending only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keepstore import KeepClient, LocalStore
from keepstore.cli import main
from keepstore.datasets import DatasetWriter, Manifest, open_dataset
from keepstore.errors import KeepError
from keepstore.lifecycle.copy import copy_dataset
from keepstore.locator import Locator
from keepstore.testing import KeepCluster

FILES = {"a.txt": b"alpha " * 2000, "sub/b.bin": bytes(range(256)) * 40, "empty": b""}


def write(store, copies: int | None = None):
    writer = DatasetWriter(store, copies=copies, block_size=4096)
    for name, data in FILES.items():
        writer.add_bytes(name, data)
    return writer.finish()


def puts(cluster: KeepCluster) -> int:
    return sum(1 for s in cluster.servers for r in s.requests if r.method == "PUT" and r.status == 200)


def read_all(store, locator: str) -> dict[str, bytes]:
    reader = open_dataset(store, locator)
    return {name: reader.read_bytes(name) for name in FILES}


@pytest.fixture
def cluster(tmp_path: Path):
    with KeepCluster(3, tmp_path / "cluster") as c:
        yield c


@pytest.fixture
def local(tmp_path: Path, monkeypatch) -> LocalStore:
    store = LocalStore(tmp_path / "local", fsync=False)
    monkeypatch.setenv("KEEP_LOCAL_STORE", str(store.root))
    return store


def run_copy(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["copy", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_copy_from_a_local_store_to_a_cluster_prints_a_locator_that_reads_there(local, cluster, monkeypatch, capsys):
    source = write(local)
    monkeypatch.setenv("KEEP_TOKEN", cluster.token)
    blocks = len([b for b in Manifest.parse(local.get(source.locator)).blocks() if b.size])

    code, report = run_copy(capsys, source.locator, "--to-services", *cluster.urls, "--copies", "2")

    assert code == 0
    assert (report["blocks"], report["sent"], report["skipped"]) == (blocks, blocks, 0)
    assert report["portable_data_hash"] == source.portable_data_hash
    with cluster.client() as kc:
        assert read_all(kc, report["locator"]) == FILES
        for loc in Manifest.parse(kc.get(report["locator"])).blocks():
            if loc.size:
                assert len(cluster.holders(loc)) == 2
    assert puts(cluster) == 2 * (blocks + 1)  # each block and the manifest, twice


def test_a_second_copy_sends_no_block(local, cluster, monkeypatch, capsys):
    source = write(local)
    monkeypatch.setenv("KEEP_TOKEN", cluster.token)
    first = run_copy(capsys, source.locator, "--to-services", *cluster.urls, "--copies", "2")[1]
    before = puts(cluster)
    code, again = run_copy(capsys, source.locator, "--to-services", *cluster.urls, "--copies", "2")
    assert code == 0 and again["sent"] == 0 and again["skipped"] == first["blocks"]
    assert again["locator"] == first["locator"]
    assert puts(cluster) - before == 2  # only the manifest, stored again


def test_an_interrupted_copy_resumes_with_the_blocks_still_missing(local, cluster):
    source = write(local)
    blocks = [b for b in Manifest.parse(local.get(source.locator)).blocks() if b.size]
    with cluster.client(copies=2) as kc:
        for loc in blocks[:3]:  # what the interrupted run had sent
            kc.put(local.get(loc), copies=2)
        before = puts(cluster)
        report = copy_dataset(local, kc, source.locator, copies=2)
        assert [b.source.md5 for b in report.sent] == [b.md5 for b in blocks[3:]]
        assert puts(cluster) - before == 2 * (len(blocks) - 3 + 1)
        assert read_all(kc, report.locator) == FILES


def test_a_block_short_of_copies_at_the_destination_is_sent(local, cluster):
    source = write(local)
    first = next(b for b in Manifest.parse(local.get(source.locator)).blocks() if b.size)
    with cluster.client(copies=2) as kc:
        kc.put(local.get(first), copies=1)
        report = copy_dataset(local, kc, source.locator, copies=2)
        assert first.md5 in {b.source.md5 for b in report.sent}
        assert len(cluster.holders(first)) == 2


def test_copy_from_a_cluster_to_a_local_directory(cluster, tmp_path, monkeypatch, capsys):
    with cluster.client(copies=2) as kc:
        source = write(kc, copies=2)
    for name, value in cluster.env().items():
        monkeypatch.setenv(name, value)
    code, report = run_copy(capsys, source.locator, "--to-local", str(tmp_path / "dest"))
    assert code == 0 and report["sent"] == report["blocks"]
    assert read_all(LocalStore(tmp_path / "dest"), report["locator"]) == FILES
    assert report["locator"] == source.locator  # unsigned on both sides: the same manifest block


def test_copy_between_clusters_signs_the_manifest_for_the_destination(tmp_path):
    key = "copy-test-signing-key"
    with KeepCluster(2, tmp_path / "a") as src, \
            KeepCluster(2, tmp_path / "b", signing_key=key, require_signatures=True) as dst, \
            src.client(copies=1) as skc, dst.client(copies=1) as dkc:
        source = write(skc, copies=1)
        first = next(b for b in Manifest.parse(skc.get(source.locator)).blocks() if b.size)
        dkc.put(skc.get(first), copies=1)  # already there, but without a signature the copy can use
        report = copy_dataset(skc, dkc, source.locator, copies=1)
        loc = Locator.parse(report.locator)
        assert loc.permission_hint is not None
        stored = Manifest.parse(dkc.get(loc))
        assert all(b.permission_hint is not None for b in stored.blocks() if b.size)
        assert stored.portable_data_hash() == source.portable_data_hash
        assert read_all(dkc, report.locator) == FILES  # every block readable where signatures are enforced


def test_blocks_skipped_at_a_signing_destination_are_sent_for_their_signatures(tmp_path):
    """A server that signs but does not enforce answers HEAD for a bare locator, so a block is
    found there; but the manifest must carry signatures, and only a PUT earns one."""
    with KeepCluster(1, tmp_path / "a") as src, KeepCluster(1, tmp_path / "b", signing_key="k" * 20) as dst, \
            src.client(copies=1) as skc, dst.client(copies=1) as dkc:
        source = write(skc, copies=1)
        first = next(b for b in Manifest.parse(skc.get(source.locator)).blocks() if b.size)
        dkc.put(skc.get(first), copies=1)
        report = copy_dataset(skc, dkc, source.locator, copies=1)
        assert first.md5 in {b.source.md5 for b in report.sent}
        stored = Manifest.parse(dkc.get(report.locator))
        assert all(b.permission_hint is not None for b in stored.blocks() if b.size)


def test_progress_counts_every_byte_of_the_dataset(local, cluster):
    source = write(local)
    seen: list[int] = []
    with cluster.client(copies=1) as kc:
        copy_dataset(local, kc, source.locator, copies=1, progress=seen.append)
    distinct = [b for b in Manifest.parse(local.get(source.locator)).blocks() if b.size]
    assert sorted(seen) == sorted(b.size for b in distinct)  # each distinct block once, by its bytes


def test_copy_of_a_block_that_is_not_a_manifest_is_an_error(local, cluster):
    loc = local.put(b"\x00not a manifest")
    with cluster.client(copies=1) as kc, pytest.raises(KeepError, match="not a dataset"):
        copy_dataset(local, kc, str(loc))
    assert puts(cluster) == 0


def test_copy_needs_a_destination(local, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["copy", "0" * 32 + "+1"])
    assert exc.value.code == 2
    assert "--to-services" in capsys.readouterr().err


def test_copy_with_a_destination_client_reads_nothing_it_need_not(local, cluster):
    """With everything already there, the source is asked for the manifest only."""
    source = write(local)
    with cluster.client(copies=1) as kc:
        copy_dataset(local, kc, source.locator, copies=1)

        class Counting(LocalStore):
            gets = 0

            def get(self, locator, **kw):  # type: ignore[override]
                Counting.gets += 1
                return super().get(locator, **kw)

        copy_dataset(Counting(local.root), kc, source.locator, copies=1)
        assert Counting.gets == 1


def test_keep_client_destination_over_keep_serve_processes(local, tmp_path, monkeypatch, capsys):
    """The same copy through real `keep serve` processes (not in-process servers)."""
    import subprocess
    import sys

    procs, urls = [], []
    try:
        for i in range(2):
            proc = subprocess.Popen([sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0",
                                     "--volume", str(tmp_path / f"serve{i}"), "--quiet", "--no-fsync"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("listening on "), line
            urls.append(line.split()[-1])
        source = write(local)
        monkeypatch.setenv("KEEP_TOKEN", "copy-test-token")
        code, report = run_copy(capsys, source.locator, "--to-services", *urls, "--copies", "2")
        assert code == 0
        with KeepClient(urls, token="copy-test-token", copies=2) as kc:
            assert read_all(kc, report["locator"]) == FILES
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
