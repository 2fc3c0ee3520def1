"""keep check and keep repair over a real cluster of keep serve servers, and over a LocalStore."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from keepstore import LocalStore
from keepstore.cli import main
from keepstore.datasets import DatasetWriter
from keepstore.errors import BlockNotFound, KeepError
from keepstore.lifecycle import EXIT_HEALTHY, EXIT_MISSING, EXIT_UNDER_REPLICATED, sampled
from keepstore.locator import Locator
from keepstore.services import probe_order


@pytest.fixture
def env(monkeypatch, tmp_path: Path):
    """Point ``keep`` (run in-process through main()) at *cluster* and nothing else."""
    import os

    for name in list(os.environ):
        if name.startswith(("KEEP_", "ARVADOS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    def point(cluster) -> None:
        for key, value in cluster.env().items():
            monkeypatch.setenv(key, value)
    return point


def run(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def write_dataset(cluster, files: dict[str, bytes]) -> tuple[str, list[Locator]]:
    with cluster.client(copies=2) as kc:
        writer = DatasetWriter(kc, copies=2, block_size=16384)
        for path, data in files.items():
            writer.add_bytes(path, data)
        receipt = writer.finish()
    return receipt.locator, [Locator.parse(b.locator) for b in receipt.blocks]


def replica_path(cluster, server: int, loc: Locator) -> Path:
    path = next(v.store.find(loc.md5) for v in cluster.servers[server].volumes if v.store.find(loc.md5))
    return Path(path)


def corrupt(cluster, server: int, loc: Locator) -> None:
    """Flip the first byte of the server's copy: the size stays right, the md5 does not."""
    path = replica_path(cluster, server, loc)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def states(report: dict) -> dict[str, str]:
    return {b["locator"]: b["state"] for b in report["blocks"]}


def intact_holders(cluster, loc: Locator) -> list[int]:
    good = []
    for i in cluster.holders(loc):
        data = replica_path(cluster, i, loc).read_bytes()
        if hashlib.md5(data).hexdigest() == loc.md5 and len(data) == loc.size:
            good.append(i)
    return good


FILES = {"a.txt": b"alpha " * 1000, "b.txt": b"bravo " * 2000, "c.txt": b"charlie " * 3000}


def test_check_finds_exactly_the_deleted_and_corrupted_replicas_and_repair_restores_them(
        keep_cluster_factory, env, capsys):
    cluster = keep_cluster_factory(4)
    env(cluster)
    dataset, blocks = write_dataset(cluster, FILES)
    a, b = blocks[0], blocks[1]
    total = len(blocks) + 1  # the data blocks and the manifest
    assert total >= 4
    code, report = run(capsys, "check", dataset, "--read-data")
    assert code == EXIT_HEALTHY and report["totals"]["healthy"] == total

    gone = cluster.holders(a)[0]
    replica_path(cluster, gone, a).unlink()
    bad = cluster.holders(b)[1]
    corrupt(cluster, bad, b)

    code, report = run(capsys, "check", dataset, "--read-data")
    assert code == EXIT_UNDER_REPLICATED
    assert {k for k, v in states(report).items() if v != "healthy"} == {str(a), str(b)}
    by_loc = {x["locator"]: x for x in report["blocks"]}
    damaged = [s["where"] for s in by_loc[str(b)]["services"] if s["state"] == "damaged"]
    assert damaged == [cluster.urls[bad]]
    assert [s["state"] for s in by_loc[str(a)]["services"]].count("verified") == 1
    assert report["totals"]["damaged_replicas"] == 1 and report["totals"]["read"] == total

    # Without --read-data only the HEAD-visible loss is found: the corrupt copy has the right size.
    code, report = run(capsys, "check", dataset)
    assert code == EXIT_UNDER_REPLICATED and {k for k, v in states(report).items() if v != "healthy"} == {str(a)}

    code, receipt = run(capsys, "repair", dataset, "--read-data")
    assert code == EXIT_HEALTHY, receipt
    repaired = {x["locator"]: x for x in receipt["blocks"]}
    assert set(repaired) == {str(a), str(b)}
    assert receipt["totals"] == {"blocks": total, "repaired": 2, "replicas_written": 2,
                                 "bytes_written": a.size + b.size, "under_replicated": 0, "missing": 0}
    # A put stores the first copies in probe order, so the server that lost (or damaged) its
    # copy is the first in probe order without a good one: repair writes there, from the other.
    assert repaired[str(a)]["written_to"] == [cluster.urls[gone]]
    assert repaired[str(b)]["written_to"] == [cluster.urls[bad]]
    assert repaired[str(b)]["source"] == cluster.urls[next(i for i in cluster.holders(b) if i != bad)]
    for loc in (a, b):
        assert intact_holders(cluster, loc) == sorted(cluster.holders(loc)) and len(cluster.holders(loc)) == 2
    code, report = run(capsys, "check", dataset, "--read-data")
    assert code == EXIT_HEALTHY and report["totals"]["healthy"] == total

    # Safe to re-run: nothing more is written.
    code, receipt = run(capsys, "repair", dataset, "--read-data")
    assert code == EXIT_HEALTHY and receipt["totals"]["replicas_written"] == 0 and receipt["blocks"] == []


def test_repair_copies_from_the_one_good_replica_and_never_writes_bad_bytes(keep_cluster_factory, env, capsys):
    cluster = keep_cluster_factory(3)
    env(cluster)
    with cluster.client() as kc:
        ok = kc.put(b"one good copy left " * 100, copies=3)
        lost = kc.put(b"every copy corrupt " * 100, copies=3)
    first, *rest = cluster.holders(ok)
    for i in rest:
        corrupt(cluster, i, ok)
    for i in cluster.holders(lost):
        corrupt(cluster, i, lost)
    before = {i: replica_path(cluster, i, lost).read_bytes() for i in range(3)}

    code, report = run(capsys, "check", str(ok), str(lost), "--read-data", "--copies", "3")
    assert code == EXIT_MISSING
    assert states(report) == {str(ok.bare()): "under-replicated", str(lost.bare()): "missing"}

    code, receipt = run(capsys, "repair", str(ok), str(lost), "--read-data", "--copies", "3")
    assert code == EXIT_MISSING
    blocks = {b["locator"]: b for b in receipt["blocks"]}
    assert blocks[str(ok.bare())]["source"] == cluster.urls[first]
    assert sorted(blocks[str(ok.bare())]["written_to"]) == sorted(cluster.urls[i] for i in rest)
    assert intact_holders(cluster, ok) == [0, 1, 2]
    assert blocks[str(lost.bare())]["written_to"] == [] and "no intact copy" in blocks[str(lost.bare())]["error"]
    assert {i: replica_path(cluster, i, lost).read_bytes() for i in range(3)} == before  # nothing written
    code, _ = run(capsys, "check", str(ok), "--read-data", "--copies", "3")
    assert code == EXIT_HEALTHY


def test_repair_tops_up_a_block_deleted_everywhere_but_once_and_says_when_services_run_out(
        keep_cluster_factory, env, capsys):
    cluster = keep_cluster_factory(2)
    env(cluster)
    with cluster.client() as kc:
        loc = kc.put(b"short of services", copies=2)
    replica_path(cluster, cluster.holders(loc)[0], loc).unlink()
    code, receipt = run(capsys, "repair", str(loc), "--copies", "3")
    assert code == EXIT_UNDER_REPLICATED
    block = receipt["blocks"][0]
    assert block["after"] == 2 and len(block["written_to"]) == 1 and "2 of 3 copies" in block["error"]
    assert len(cluster.holders(loc)) == 2


def test_text_output_names_the_problem_blocks_and_the_totals(keep_cluster_factory, env, capsys):
    cluster = keep_cluster_factory(2)
    env(cluster)
    with cluster.client() as kc:
        loc = kc.put(b"text", copies=2)
    replica_path(cluster, 1 if 1 in cluster.holders(loc) else 0, loc).unlink()
    capsys.readouterr()
    assert main(["check", str(loc), "--copies", "2"]) == EXIT_UNDER_REPLICATED
    out = capsys.readouterr().out
    assert f"{loc.bare()} under-replicated: 1 of 2 copies (missing on" in out
    assert "checked 1 blocks" in out and "1 under-replicated, 0 missing" in out


def test_check_verifies_the_files_of_a_local_store(tmp_path, monkeypatch, env, capsys):
    store = LocalStore(tmp_path / "blocks")
    good, damaged, gone = (store.put(x) for x in (b"good", b"damaged", b"gone"))
    store.path_for(damaged.md5).write_bytes(b"Damaged")
    store.delete(gone)
    monkeypatch.setenv("KEEP_LOCAL_STORE", str(store.root))
    code, report = run(capsys, "check", str(good), str(damaged), str(gone))
    assert code == EXIT_MISSING
    assert states(report) == {str(good): "healthy", str(damaged): "missing", str(gone): "missing"}
    services = {b["locator"]: b["services"][0]["state"] for b in report["blocks"]}
    assert services == {str(good): "verified", str(damaged): "damaged", str(gone): "missing"}
    assert main(["repair", str(good)]) == 1
    assert "local store is one copy" in capsys.readouterr().err


def test_read_data_percent_reads_a_stable_sample(keep_cluster_factory, env, capsys):
    cluster = keep_cluster_factory(2)
    env(cluster)
    with cluster.client() as kc:
        locs = [kc.put(f"block {i}".encode(), copies=2) for i in range(40)]
    code, report = run(capsys, "check", *map(str, locs), "--read-data=25")
    assert code == EXIT_HEALTHY
    chosen = {b["locator"] for b in report["blocks"] if b["read"]}
    assert chosen == {str(loc.bare()) for loc in locs if sampled(loc, 0.25)}
    assert 0 < len(chosen) < 40
    assert all(s["state"] == ("verified" if b["read"] else "present") for b in report["blocks"]
               for s in b["services"])
    with pytest.raises(SystemExit) as exit_info:  # usage: a percentage above 0
        main(["check", str(locs[0]), "--read-data=0"])
    assert exit_info.value.code == 2


def test_client_per_service_operations(keep_cluster_factory):
    cluster = keep_cluster_factory(2)
    with cluster.client() as kc:
        one, two = kc.services
        loc = kc.put_to(one, b"only on one")
        assert cluster.holders(loc) == [0]
        assert kc.head_on(one, loc) is True and kc.head_on(two, loc) is False
        assert kc.get_from(one, loc) == b"only on one"
        with pytest.raises(BlockNotFound):
            kc.get_from(two, loc)
        corrupt(cluster, 0, loc)
        with pytest.raises(KeepError):  # the server cuts a damaged copy short; the bytes never come back
            kc.get_from(one, loc)


def test_lifecycle_md_example_runs_and_its_exit_codes_are_the_real_ones():
    import doctest

    docs = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"
    result = doctest.testfile(str(docs), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 29 and result.failed == 0
    text = docs.read_text()
    assert f"| {EXIT_UNDER_REPLICATED} | under-replicated" in text
    assert f"| {EXIT_MISSING} | missing data" in text


def test_repair_restores_a_block_lost_everywhere_from_the_disk_cache(keep_cluster_factory, tmp_path):
    from keepstore.cache import DiskBlockCache
    from keepstore.lifecycle import check_blocks, repair_blocks

    cluster = keep_cluster_factory(3)
    with cluster.client(cache=DiskBlockCache(tmp_path / "cache"), close_cache=True) as kc:
        loc = kc.put(b"cached before the loss", copies=2)
        assert kc.get(loc) == b"cached before the loss"  # now in the cache
        for i in cluster.holders(loc):
            replica_path(cluster, i, loc).unlink()
        report = check_blocks(kc, [loc], copies=2)
        assert report.blocks[0].state == "missing" and report.exit_code == EXIT_MISSING
        receipt = repair_blocks(kc, report)
        assert receipt.blocks[0].source == "cache" and len(receipt.blocks[0].written_to) == 2
        assert receipt.exit_code == EXIT_HEALTHY
        assert len(intact_holders(cluster, loc)) == 2


def test_an_unreachable_service_is_unknown_not_a_replica_and_repair_writes_elsewhere(keep_cluster_factory):
    from keepstore.lifecycle import ReplicaState, check_blocks, repair_blocks

    cluster = keep_cluster_factory(3)
    with cluster.client(timeout=(2, 5), retries=0) as kc:
        loc = kc.put(b"one server goes away", copies=2)
        down, up = cluster.holders(loc)
        cluster.servers[down].stop(grace=1.0)
        report = check_blocks(kc, [loc], copies=2)
        states = {r.where: r.state for r in report.blocks[0].replicas}
        assert states[cluster.urls[down]] is ReplicaState.UNKNOWN
        assert states[cluster.urls[up]] is ReplicaState.PRESENT
        assert report.exit_code == EXIT_UNDER_REPLICATED
        receipt = repair_blocks(kc, report)
        [third] = {0, 1, 2} - {down, up}
        assert receipt.blocks[0].written_to == (cluster.urls[third],)
        assert receipt.exit_code == EXIT_HEALTHY and third in cluster.holders(loc)
        order = [s.root for s in probe_order(loc, kc.services)]
        failed = [w for w, _ in receipt.blocks[0].failures]
        # the stopped server is tried only when it comes before the third in probe order
        assert failed == ([cluster.urls[down]] if order.index(cluster.urls[down]) < order.index(cluster.urls[third])
                          else [])


def test_check_and_repair_a_dataset_on_servers_that_require_signatures(keep_cluster_factory, env, capsys):
    cluster = keep_cluster_factory(3, signing_key="lifecycle-test-key", require_signatures=True)
    env(cluster)
    dataset, blocks = write_dataset(cluster, {"s.txt": b"signed " * 5000})
    assert "+A" in dataset and all("+A" in str(b) for b in blocks)
    gone = cluster.holders(blocks[0])[0]
    replica_path(cluster, gone, blocks[0]).unlink()
    code, report = run(capsys, "check", dataset, "--read-data")
    assert code == EXIT_UNDER_REPLICATED
    assert {k for k, v in states(report).items() if v != "healthy"} == {str(blocks[0].bare())}
    code, receipt = run(capsys, "repair", dataset)
    assert code == EXIT_HEALTHY and receipt["blocks"][0]["written_to"] == [cluster.urls[gone]]
    assert "+A" not in json.dumps(receipt)  # reports name blocks bare
    assert run(capsys, "check", dataset, "--read-data")[0] == EXIT_HEALTHY
