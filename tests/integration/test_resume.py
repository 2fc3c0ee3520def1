"""Resumable `keep put`: a re-run after a complete run, a kill -9 or a change reads and sends only what is missing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from transfer_helpers import SIGNING, SIGNING_KEY, Keep, make_keep, snapshot, write_tree

from keepstore.datasets import DatasetReader
from keepstore.datasets.inventory import inventory
from keepstore.datasets.resume import journal_for, put_inventory, state_dir
from keepstore.locator import Locator

BLOCK = 16 << 10  # small blocks: many of them, from a small tree


@pytest.fixture
def keep_cli(keep_cluster_factory, monkeypatch, capsys, request) -> Keep:
    return make_keep(keep_cluster_factory, monkeypatch, capsys, request)


def make_source(root: Path) -> Path:
    rng = __import__("random").Random(17)
    files = {f"d{i % 3}/f{i:02d}.bin": rng.randbytes(rng.randrange(0, 3 * BLOCK)) for i in range(24)}
    files["big.bin"] = rng.randbytes(5 * BLOCK + 123)
    return write_tree(root, files)


def put(client, src: Path, *, resume: bool = True):
    journal, key = journal_for(client, [str(src)], block_size=BLOCK) if resume else (None, "")
    return put_inventory(client, inventory([str(src)]), journal=journal, key=key, block_size=BLOCK)


def read_back(client, locator: str, dest: Path) -> dict[str, bytes]:
    with DatasetReader(client, locator) as reader:
        reader.extract(dest)
    return snapshot(dest)


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_a_re_put_of_an_unchanged_tree_sends_nothing_and_prints_the_same_locator(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    first = keep_cli.ok("put", "--no-progress", str(src)).strip()
    assert list(state_dir().glob("put-*.jsonl"))  # under $XDG_CACHE_HOME/keepstore/resume
    keep_cli.forget()
    again = json.loads(keep_cli.ok("put", "--json", "--no-progress", str(src)))
    assert keep_cli.put_md5s() == []
    assert again["locator"] == first and again["bytes_sent"] == 0
    assert all(not b["sent"] and b["replicas"] == 2 for b in again["blocks"])


def test_no_resume_neither_reads_nor_writes_a_state(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    keep_cli.ok("put", "--no-resume", "--no-progress", str(src))
    assert not state_dir().exists() or not list(state_dir().iterdir())


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_many_blocks_unchanged_are_not_read_and_not_sent(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    with keep_cli.cluster.client() as client:
        first = put(client, src)
        assert len(first.blocks) > 6
        keep_cli.forget()
        again = put(client, src)
    assert again.locator == first.locator and again.bytes_sent == 0
    assert keep_cli.put_md5s() == [] and keep_cli.get_md5s() == []


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_a_file_changed_between_runs_is_read_again(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    with keep_cli.cluster.client() as client:
        first = put(client, src)
        target = src / "d1" / "f04.bin"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size: only the content (and mtime) change
        target.write_bytes(bytes(data))
        os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000_000))
        keep_cli.forget()
        again = put(client, src)
        puts = keep_cli.put_md5s()
        assert read_back(client, again.locator, tmp_path / "out") == snapshot(src)
        fresh = put(client, src, resume=False)
    assert again.portable_data_hash == fresh.portable_data_hash != first.portable_data_hash
    sent = {b.locator for b in again.blocks if b.sent}
    assert 1 <= len(sent) <= 2  # the block(s) holding the changed byte
    assert len(puts) == 2 * (len(sent) + 1)  # those and the manifest, two copies each


def test_a_torn_state_line_is_ignored(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    with keep_cli.cluster.client() as client:
        first = put(client, src)
        (state,) = state_dir().glob("put-*.jsonl")
        with open(state, "a") as f:
            f.write('{"block": 3, "locat')
        again = put(client, src)
    assert again.locator == first.locator and again.bytes_sent == 0


def test_signatures_close_to_expiry_are_not_trusted_the_blocks_are_sent_again(keep_cluster_factory, tmp_path):
    cluster = keep_cluster_factory(3, signing_key=SIGNING_KEY, require_signatures=True, signing_ttl=3600)
    src = make_source(tmp_path / "src")
    with cluster.client() as client:
        first = put(client, src)
        for s in cluster.servers:
            s.requests.clear()
        again = put(client, src)
    puts = [r for s in cluster.servers for r in s.requests if r.method == "PUT"]
    assert len(puts) == 2 * (len(first.blocks) + 1)  # an hour left is under the one-day margin: all re-sent
    assert again.portable_data_hash == first.portable_data_hash


KILLER = """
import os, signal, sys
from keepstore.client import KeepClient
from keepstore.datasets.inventory import inventory
from keepstore.datasets.resume import journal_for, put_inventory
services, token, src, limit, block = sys.argv[1:]
client = KeepClient(services=services.split(), token=token)
journal, key = journal_for(client, [src], block_size=int(block))
done = 0
def progress(n):
    global done
    done += n
    if done >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all, as kill -9 from outside
put_inventory(client, inventory([src]), journal=journal, key=key, block_size=int(block), progress=progress)
print("not killed")
"""


@pytest.mark.parametrize("keep_cli", SIGNING, indirect=True)
def test_kill_9_half_way_then_rerun_sends_only_the_missing_blocks_with_the_same_locator(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    cluster = keep_cli.cluster
    proc = subprocess.run([sys.executable, "-c", KILLER, cluster.services, cluster.token, str(src),
                           str(total // 2), str(BLOCK)], capture_output=True, timeout=300, env=os.environ)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    puts = keep_cli.put_md5s()
    before = {md5 for md5 in puts if puts.count(md5) >= 2}  # stored with both copies before the kill
    assert before
    keep_cli.forget()
    with cluster.client() as client:
        resumed = put(client, src)
        resent = set(keep_cli.put_md5s()) - {Locator.parse(resumed.locator).md5}
        assert read_back(client, resumed.locator, tmp_path / "out") == snapshot(src)
    data_blocks = {Locator.parse(b.locator).md5 for b in resumed.blocks}
    assert resent | set(puts) >= data_blocks
    if not cluster.servers[0].require_signatures:
        assert not resent & before  # what was stored is found (journal, or a HEAD) and not sent again
    else:
        assert len(resent & before) <= 2  # only blocks stored but not yet journalled (in flight at the kill)
    sent_bytes = sum(b.size for b in resumed.blocks if b.sent)
    assert sent_bytes <= 0.55 * total + 2 * BLOCK
    # The same dataset as a run that was never interrupted.
    fresh = keep_cluster_put_fresh(keep_cli, src, tmp_path)
    assert resumed.portable_data_hash == fresh.portable_data_hash
    if not cluster.servers[0].require_signatures:
        assert resumed.locator == fresh.locator


def keep_cluster_put_fresh(keep_cli: Keep, src: Path, tmp_path: Path):
    from keepstore.testing import KeepCluster

    with KeepCluster(3, tmp_path / "fresh-cluster") as other, other.client() as client:
        return put(client, src, resume=False)


def test_the_shell_examples_in_docs_datasets_md_run(keep_cluster, tmp_path):
    text = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    blocks = re.findall(r"```sh\n(# (?:re-runs of keep put|datasets from datasets).*?)```", text, re.S)
    assert len(blocks) == 2
    write_tree(tmp_path / "results", {"a.txt": b"a\n", "old.log": b"log\n", "sub/b.bin": os.urandom(3000)})
    write_tree(tmp_path / "extra", {"c.txt": b"c\n"})
    env = {**os.environ, **keep_cluster.env(), "PATH": os.path.dirname(sys.executable) + os.pathsep
           + os.environ["PATH"]}
    runs = [subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300) for block in blocks[:1]]
    assert runs[0].returncode == 0, runs[0].stderr
    assert snapshot(tmp_path / "work") == snapshot(tmp_path / "results")
    assert not (Path(os.environ["XDG_CACHE_HOME"]) / "keepstore" / "resume").exists()  # the rm -rf
    second = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks[1]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("A\tc.txt\nD\told.log\n{")


def test_a_file_added_in_the_middle_keeps_the_blocks_before_it(keep_cli, tmp_path):
    src = make_source(tmp_path / "src")
    with keep_cli.cluster.client() as client:
        first = put(client, src)
        (src / "d1" / "e-new.bin").write_bytes(os.urandom(BLOCK // 2))  # sorts into the middle of the tree
        again = put(client, src)
        assert read_back(client, again.locator, tmp_path / "out") == snapshot(src)
    offset = 0
    for e in inventory([str(src)]).files:
        if e.path == "d1/e-new.bin":
            break
        offset += e.size
    untouched = offset // BLOCK  # blocks wholly before the new file
    assert untouched >= 2
    assert [b.locator for b in again.blocks[:untouched]] == [b.locator for b in first.blocks[:untouched]]
    assert not any(b.sent for b in again.blocks[:untouched])


def test_tools_bench_resume_runs_and_reports_every_case(tmp_path):
    out = tmp_path / "bench.json"
    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_resume"
    done = subprocess.run([sys.executable, str(tool), "--size-mib", "32", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["reput"]["again_bytes_sent"] == 0 and result["reput"]["same_locator"]
    assert result["update"]["data_bytes_sent"] == 1 << 20
    assert result["kill"]["same_locator_as_uninterrupted"] and result["kill"]["rerun_share"] <= 0.55
