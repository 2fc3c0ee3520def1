"""Datasets through a keep serve cluster: ``keep put``/``keep get`` round trips with copies=2,
and both directions of dataset interop with the Arvados SDK."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import arvados.collection
import arvados.keep
import pytest

from keepstore.datasets import DatasetReader
from keepstore.testing import wait_until

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
MiB = 1 << 20


def keep(cluster, tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(cluster.env(), HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), KEEP_TOKEN=TOKEN)
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, input=stdin,
                          capture_output=True, timeout=300)


def tree(root: Path) -> dict[str, str | None]:
    """Relative path -> md5 of the file (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "with space" / "ñandú 日本").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "empty file").write_bytes(b"")
    (root / "deep" / "er" / "est" / "leaf.txt").write_bytes(b"leaf\n")
    (root / "with space" / "ñandú 日本" / "名前 with spaces.csv").write_bytes(b"a,b\n1,2\n")
    (root / "with space" / "zero").write_bytes(b"")
    big = os.urandom(MiB) * 64 + os.urandom(12345)  # just over 64 MiB: two blocks
    (root / "big.bin").write_bytes(big)
    return root


@pytest.mark.slow
def test_keep_put_and_get_round_trip_a_tree_with_copies_2(keep_cluster, source, tmp_path):
    put = keep(keep_cluster, tmp_path, "put", "--copies", "2", "--json", "--no-progress", str(source))
    assert put.returncode == 0, put.stderr.decode()
    receipt = json.loads(put.stdout)
    assert receipt["min_replicas"] == 2
    locator = receipt["locator"]
    for block in [*receipt["blocks"], receipt["manifest_block"]]:
        holders = keep_cluster.holders(block["locator"])
        assert len(holders) == 2 and block["replicas"] == 2
        assert sorted(block["services"]) == sorted(keep_cluster.urls[i] for i in holders)
    get = keep(keep_cluster, tmp_path, "get", locator, str(tmp_path / "out"))
    assert get.returncode == 0, get.stderr.decode()
    assert tree(tmp_path / "out") == tree(source)
    ls = keep(keep_cluster, tmp_path, "ls", locator)
    assert "名前 with spaces.csv" in ls.stdout.decode()
    cat = keep(keep_cluster, tmp_path, "cat", f"{locator}/with space/ñandú 日本/名前 with spaces.csv")
    assert cat.stdout == b"a,b\n1,2\n", cat.stderr.decode()


def test_the_arvados_sdk_reads_a_dataset_we_wrote(keep_cluster, tmp_path):
    root = tmp_path / "small"
    (root / "d ir").mkdir(parents=True)
    (root / "d ir" / "ü.txt").write_bytes(b"unicode name\n")
    (root / "e").write_bytes(b"")
    (root / "r.bin").write_bytes(os.urandom(200_000))
    put = keep(keep_cluster, tmp_path, "put", "--copies", "2", "--no-progress", str(root))
    assert put.returncode == 0, put.stderr.decode()
    locator = put.stdout.decode().splitlines()[-1]
    arv = arvados.keep.KeepClient(proxy=keep_cluster.services, api_token=TOKEN, local_store="", num_retries=0)
    manifest = arv.get(locator).decode()
    reader = arvados.collection.CollectionReader(manifest, api_client=None, keep_client=arv,
                                                 replication_desired=1)
    found = {}
    for stream_name, files in _walk(reader):
        for name in files:
            with reader.open(f"{stream_name}/{name}", "rb") as f:
                found[f"{stream_name}/{name}"] = f.read()
    expected = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert {k.removeprefix("./"): v for k, v in found.items()} == expected


def _walk(reader) -> list[tuple[str, list[str]]]:
    out = []

    def visit(coll, prefix: str) -> None:
        files = []
        for name, item in coll.items():
            if isinstance(item, arvados.collection.Subcollection) or hasattr(item, "items"):
                visit(item, f"{prefix}/{name}")
            else:
                files.append(name)
        out.append((prefix, files))

    visit(reader, ".")
    return out


def test_keep_get_reads_a_manifest_the_arvados_sdk_wrote(keep_cluster, tmp_path):
    arv = arvados.keep.KeepClient(proxy=keep_cluster.services, api_token=TOKEN, local_store="", num_retries=0)
    coll = arvados.collection.Collection(api_client=None, keep_client=arv, replication_desired=1)
    files = {"top.txt": b"from arvados\n", "sub dir/ü.bin": os.urandom(150_000), "sub dir/empty": b""}
    for name, data in files.items():
        with coll.open(name, "wb") as f:
            f.write(data)
    manifest = coll.manifest_text()
    dataset = arv.put(manifest.encode(), copies=2)
    get = keep(keep_cluster, tmp_path, "get", dataset, str(tmp_path / "out"))
    assert get.returncode == 0, get.stderr.decode()
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    with keep_cluster.client(token=TOKEN) as kc:
        reader = DatasetReader(kc, dataset)
        assert reader.open("sub dir/ü.bin").read() == files["sub dir/ü.bin"]


@pytest.mark.parametrize("wanted, volume", [("hot", "v-hot"), ("cold", "v-cold")])
def test_keep_put_storage_classes_reach_the_server_and_come_back_in_the_receipt(tmp_path, wanted, volume):
    from types import SimpleNamespace

    from keepstore.server import KeepServer

    (tmp_path / "f.txt").write_bytes(b"classy data\n")
    with KeepServer([f"{tmp_path / 'v-hot'}:hot", f"{tmp_path / 'v-cold'}:cold"], fsync=False) as server:
        cluster = SimpleNamespace(env=lambda: {"KEEP_SERVICES": server.url, "KEEP_TOKEN": TOKEN})
        put = keep(cluster, tmp_path, "put", "--copies", "1", "--storage-classes", wanted, "--json",
                   "--no-progress", str(tmp_path / "f.txt"))
        assert put.returncode == 0, put.stderr.decode()
        receipt = json.loads(put.stdout)
        [block] = receipt["blocks"]
        assert block["storage_classes"] == {wanted: 1}
        md5 = block["locator"][:32]
        assert (tmp_path / volume / md5[:3] / md5).is_file()
        other = "v-cold" if volume == "v-hot" else "v-hot"
        assert not (tmp_path / other / md5[:3] / md5).exists()


def test_sequential_reader_prefetches_the_next_blocks_into_the_cache(keep_cluster):

    from keepstore import MemoryBlockCache
    from keepstore.datasets import DatasetWriter

    data = os.urandom(10 * 4096)
    with keep_cluster.client() as writer_kc, DatasetWriter(writer_kc, copies=1, block_size=4096) as w:
        w.add_bytes("f.bin", data)
        locator = w.finish().locator
    cache = MemoryBlockCache()
    with keep_cluster.client(cache=cache, retries=0) as kc:
        reader = DatasetReader(kc, locator, readahead=2)
        blocks = [seg.locator for seg in reader.stat("f.bin").segments]
        with reader.open("f.bin") as f:
            assert f.read(100) == data[:100]  # block 0: blocks 1 and 2 are asked for in the background
            wait_until(lambda: cache.get(blocks[1]) is not None and cache.get(blocks[2]) is not None,
                       what="read-ahead of blocks 1 and 2")
            assert all(cache.get(b) is None for b in blocks[3:]), "read-ahead stays within its window"
            for server in keep_cluster.servers:
                server.stop()
            f.seek(4096)
            assert f.read(2 * 4096) == data[4096:3 * 4096]  # served from the cache, servers gone
