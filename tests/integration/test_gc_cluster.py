"""keep gc on a cluster of keep serve servers: live and young blocks stay, writes during the gc are safe."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from keepstore import KeepClient
from keepstore.cli import main
from keepstore.datasets import DatasetWriter
from keepstore.lifecycle.gc import mark
from keepstore.lifecycle.gc_cluster import collect_cluster
from keepstore.server.trash import list_trash
from keepstore.testing import DEFAULT_SYSTEM_TOKEN, KeepCluster
from keepstore.transport import Request, Response, Transport
from keepstore.transport.curl import CurlTransport

OLD = datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc).timestamp()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch):
    with KeepCluster(3, tmp_path / "cluster") as c:
        for name, value in c.env().items():
            monkeypatch.setenv(name, value)
        yield c


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "system-token"
    path.write_text(DEFAULT_SYSTEM_TOKEN + "\n")
    return path


def age_everything(cluster: KeepCluster, when: float = OLD) -> None:
    for server in cluster.servers:
        for volume in server.volumes:
            for md5, _size, _mtime in list(volume.index()):
                path = volume.find(md5)
                assert path is not None
                os.utime(path, (when, when))


def dataset(kc: KeepClient, name: str):
    writer = DatasetWriter(kc, copies=2, block_size=1024)
    writer.add_bytes(f"{name}.txt", name.encode() * 1000)
    return writer.finish()


def copies_of(cluster: KeepCluster, md5: str) -> int:
    return len(cluster.holders(md5 + "+0"))


def trashed(cluster: KeepCluster) -> set[str]:
    return {t.md5 for s in cluster.servers for v in s.volumes for t in list_trash(v.path)}


def gc(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["gc", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_cluster_gc_trashes_old_unreferenced_blocks_on_every_holder_and_keeps_live_ones(cluster, token_file, capsys):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        junk = [kc.put(f"old garbage {i}".encode(), copies=2) for i in range(3)]
        age_everything(cluster)
        young = kc.put(b"unreferenced but young", copies=2)
        live_md5s = mark(kc, [live.locator])
        assert live_md5s == {b.locator.split("+")[0] for b in (*live.blocks, live.manifest_block)}

        code, report = gc(capsys, live.locator, "--system-token-file", str(token_file))

        assert code == 0
        assert sorted({c["locator"] for c in report["candidates"]}) == sorted(str(j) for j in junk)
        assert {c["outcome"] for c in report["candidates"]} == {"trashed"}
        assert len(report["candidates"]) == 6  # each junk block on both its holders
        assert trashed(cluster) == {j.md5 for j in junk}
        assert all(copies_of(cluster, j.md5) == 0 for j in junk)
        assert all(copies_of(cluster, md5) == 2 for md5 in live_md5s)
        assert copies_of(cluster, young.md5) == 2
        assert report["kept_young"] == 2
        assert kc.get(live.manifest_block.locator)  # the dataset reads as before


def test_cluster_gc_dry_run_lists_copies_and_bytes_and_deletes_nothing(cluster, token_file, capsys):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        junk = kc.put(b"x" * 100, copies=2)
        age_everything(cluster)
        code, report = gc(capsys, live.locator, "--system-token-file", str(token_file), "--dry-run")
    assert code == 0
    assert [(c["locator"], c["outcome"]) for c in report["candidates"]] == [(str(junk), "would-delete")] * 2
    assert report["bytes"] == 200
    assert copies_of(cluster, junk.md5) == 2 and trashed(cluster) == set()


def test_cluster_gc_keeps_what_a_receipt_names(cluster, token_file, tmp_path, capsys):
    with cluster.client(copies=2) as kc:
        kept = dataset(kc, "kept-by-receipt")
        other = dataset(kc, "root")
        (tmp_path / "receipt.json").write_text(kept.to_json())
        age_everything(cluster)
        code, report = gc(capsys, other.locator, "--keep-from", str(tmp_path / "receipt.json"),
                          "--system-token-file", str(token_file))
        assert code == 0 and report["candidates"] == []
        assert all(copies_of(cluster, b.locator.split("+")[0]) == 2 for b in kept.blocks)


class WritesDuringGc(Transport):
    """Real HTTP to the cluster; *before* runs once, just before the first request matching *method*
    (another client writing while the gc runs)."""

    def __init__(self, method: str, before) -> None:
        self.inner = CurlTransport()
        self.method, self.before = method, before

    def request(self, request: Request) -> Response:
        if request.method == self.method and self.before is not None:
            before, self.before = self.before, None
            before(request)
        return self.inner.request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_block_rewritten_after_the_listing_is_kept_by_the_server(cluster):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        reused = kc.put(b"old, then written again by a new dataset", copies=2)
        age_everything(cluster)

        def writer(request: Request) -> None:  # the DELETE is on its way: a new dataset PUTs the block
            assert kc.put(b"old, then written again by a new dataset", copies=3) == reused.bare()

        with cluster.client(transport=WritesDuringGc("DELETE", writer)) as gc_client:
            report = collect_cluster(gc_client, mark(kc, [live.locator]), datetime.datetime.now(datetime.timezone.utc),
                                     system_token=DEFAULT_SYSTEM_TOKEN, dry_run=False, threads=1)
        outcomes = {c.outcome for c in report.candidates}  # (one DELETE at a time: all come after the PUT)
        assert outcomes == {"kept-modified"}
        assert copies_of(cluster, reused.md5) == 3
        assert trashed(cluster) == set()


def test_a_put_answered_during_a_parallel_sweep_always_leaves_its_block_in_place(cluster):
    """DELETEs in flight on other threads may beat the PUT to a server (that copy is trashed and
    the PUT writes a new one) or lose to it (412): either way every copy the PUT confirmed stays."""
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        reused = kc.put(b"old, written again while DELETEs are in flight", copies=2)
        age_everything(cluster)

        def writer(request: Request) -> None:
            kc.put(b"old, written again while DELETEs are in flight", copies=3)

        with cluster.client(transport=WritesDuringGc("DELETE", writer)) as gc_client:
            collect_cluster(gc_client, mark(kc, [live.locator]), datetime.datetime.now(datetime.timezone.utc),
                            system_token=DEFAULT_SYSTEM_TOKEN, dry_run=False, threads=8)
        assert copies_of(cluster, reused.md5) == 3
        assert kc.get(reused) == b"old, written again while DELETEs are in flight"


def test_a_block_written_during_the_gc_is_never_a_candidate(cluster):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        age_everything(cluster)
        new: list = []

        def writer(request: Request) -> None:  # written while the gc lists the services
            new.append(kc.put(b"written while the gc runs", copies=3))

        cutoff = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=-1)
        with cluster.client(transport=WritesDuringGc("GET", writer)) as gc_client:
            report = collect_cluster(gc_client, mark(kc, [live.locator]), cutoff,
                                     system_token=DEFAULT_SYSTEM_TOKEN, dry_run=False)
        assert report.candidates == () and report.kept_young == 3
        assert copies_of(cluster, new[0].md5) == 3


def test_servers_keep_blocks_younger_than_their_min_age(tmp_path, token_file, monkeypatch, capsys):
    with KeepCluster(2, tmp_path / "c", trash_min_age=7 * 86400) as cluster, cluster.client(copies=2) as kc:
        for name, value in cluster.env().items():
            monkeypatch.setenv(name, value)
        live = dataset(kc, "live")
        junk = kc.put(b"two days old", copies=2)
        two_days_ago = datetime.datetime.now(datetime.timezone.utc).timestamp() - 2 * 86400
        for i in cluster.holders(junk):
            path = cluster.servers[i].volumes[0].find(junk.md5)
            assert path is not None
            os.utime(path, (two_days_ago, two_days_ago))
        code, report = gc(capsys, live.locator, "--grace", "1d", "--system-token-file", str(token_file))
        assert code == 0
        assert [c["outcome"] for c in report["candidates"]] == ["kept-young"] * 2
        assert copies_of(cluster, junk.md5) == 2


def test_an_unreadable_root_stops_the_gc_before_anything_is_deleted(cluster, token_file, capsys):
    with cluster.client(copies=2) as kc:
        junk = kc.put(b"would be garbage", copies=2)
        age_everything(cluster)
    missing = "0123456789abcdef0123456789abcdef+10"
    assert main(["gc", missing, "--system-token-file", str(token_file)]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    assert copies_of(cluster, junk.md5) == 2


def test_a_wrong_system_token_stops_the_gc_before_anything_is_deleted(cluster, tmp_path, capsys):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        junk = kc.put(b"would be garbage", copies=2)
        age_everything(cluster)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-system-token")
    assert main(["gc", live.locator, "--system-token-file", str(wrong)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "nothing deleted" in err and "not-the-system-token" not in err
    assert copies_of(cluster, junk.md5) == 2


def test_cluster_gc_needs_the_system_token_file(cluster, capsys):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
    assert main(["gc", live.locator]) == 1
    assert "--system-token-file" in capsys.readouterr().err


def test_older_than_keeps_blocks_after_that_time(cluster, token_file, capsys):
    with cluster.client(copies=2) as kc:
        live = dataset(kc, "live")
        junk = kc.put(b"from June 2024", copies=2)
        age_everything(cluster)
        code, report = gc(capsys, live.locator, "--older-than", "2024-05-01T00:00Z",
                          "--system-token-file", str(token_file))
    assert code == 0 and report["candidates"] == [] and report["cutoff"].startswith("2024-05-01T00:00:00")
    assert copies_of(cluster, junk.md5) == 2
