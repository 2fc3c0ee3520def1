"""Each block is fetched once per operation: reads, extract, ``keep get`` and ``keep cat`` counted
at a real `keep serve`; extract's memory stays bounded and a failing block leaves no torn file."""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from keepstore.cache import MemoryBlockCache
from keepstore.datasets import DatasetReader, DatasetWriter
from keepstore.datasets.manifest import Manifest, Segment
from keepstore.errors import BlockNotFound
from keepstore.local import LocalStore

KiB = 1 << 10


@pytest.fixture
def files() -> dict[str, bytes]:
    rng = random.Random(13)
    out = {f"d{i % 4}/f{i:03}.bin": rng.randbytes(rng.randrange(1, 9 * KiB)) for i in range(60)}
    out["big/spans.bin"] = rng.randbytes(200 * KiB)  # crosses several blocks
    out["empty"] = b""
    return out


@pytest.fixture
def dataset(keep_server, files):
    """*files* written to one `keep serve` in 64 KiB blocks: several files per block."""
    client = keep_server_client(keep_server)
    with DatasetWriter(client, copies=1, block_size=64 * KiB) as w:
        for path, data in files.items():
            w.add_bytes(path, data)
        receipt = w.finish()
    keep_server.requests.clear()
    yield client, receipt
    client.close()


def keep_server_client(server):
    from keepstore.client import KeepClient
    from keepstore.testing import DEFAULT_SYSTEM_TOKEN

    return KeepClient(services=[server.url], token=DEFAULT_SYSTEM_TOKEN)


def gets_per_block(server) -> collections.Counter[str]:
    return collections.Counter(r.path.strip("/").split("+")[0] for r in server.requests
                               if r.method == "GET" and r.status == 200)


def data_blocks(receipt) -> set[str]:
    return {b.locator.split("+")[0] for b in receipt.blocks}


def assert_each_block_once(server, receipt) -> None:
    counts = gets_per_block(server)
    assert len(receipt.blocks) >= 4
    assert {md5: counts[md5] for md5 in data_blocks(receipt)} == dict.fromkeys(data_blocks(receipt), 1)
    assert counts[receipt.locator.split("+")[0]] == 1  # the manifest block too
    assert sum(counts.values()) == len(receipt.blocks) + 1


def test_reading_every_file_gets_each_block_once(keep_server, dataset, files):
    client, receipt = dataset
    reader = DatasetReader(client, receipt.locator)
    for f in reader.files():
        assert reader.read_bytes(f.path) == files[f.path]
    reader.close()
    assert_each_block_once(keep_server, receipt)


def test_extract_gets_each_block_once_and_writes_every_file(keep_server, dataset, files, tmp_path):
    client, receipt = dataset
    with DatasetReader(client, receipt.locator, threads=3) as reader:
        assert reader.extract(tmp_path / "out") == sum(map(len, files.values()))
    assert_each_block_once(keep_server, receipt)
    for path, data in files.items():
        assert (tmp_path / "out" / path).read_bytes() == data
    assert not list((tmp_path / "out").rglob("*.partial"))


def keep_cli(server, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    from keepstore.testing import DEFAULT_SYSTEM_TOKEN

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), KEEP_SERVICES=server.url, KEEP_TOKEN=DEFAULT_SYSTEM_TOKEN)
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, capture_output=True, timeout=120)


def test_keep_get_gets_each_block_once(keep_server, dataset, files, tmp_path):
    _client, receipt = dataset
    done = keep_cli(keep_server, tmp_path, "get", "--no-progress", receipt.locator, str(tmp_path / "got"))
    assert done.returncode == 0, done.stderr.decode()
    assert_each_block_once(keep_server, receipt)
    assert {str(p.relative_to(tmp_path / "got")): p.read_bytes()
            for p in (tmp_path / "got").rglob("*") if p.is_file()} == files


def test_keep_cat_of_several_files_gets_each_block_once(keep_server, dataset, files, tmp_path):
    _client, receipt = dataset
    names = sorted(p for p in files if p.startswith("d"))[:12]
    done = keep_cli(keep_server, tmp_path, "cat", *(f"{receipt.locator}/{n}" for n in names))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"".join(files[n] for n in names)
    counts = gets_per_block(keep_server)
    assert counts[receipt.locator.split("+")[0]] == 1
    assert set(counts.values()) == {1}


# -- a LocalStore: memory, open files, atomicity -------------------------------------------------


class FailingStore:
    """A LocalStore that says one block is missing (and counts the gets)."""

    def __init__(self, inner: LocalStore, missing: str) -> None:
        self.inner, self.missing = inner, missing
        self.gets: collections.Counter[str] = collections.Counter()

    def get(self, locator, **kw):
        md5 = str(locator).split("+")[0]
        self.gets[md5] += 1
        if md5 == self.missing:
            raise BlockNotFound(f"block {md5} not found (test)", locator=str(locator))
        return self.inner.get(locator, **kw)


class CopyingStore:
    """Blocks held apart from the traced heap; each get makes a fresh copy of exactly the block's
    size, so traced memory counts the blocks an extract holds (LocalStore.get reserves 64 MiB)."""

    def __init__(self, inner: LocalStore, locators) -> None:
        self.blocks = {str(loc).split("+")[0]: inner.get(loc) for loc in locators}

    def get(self, locator, **kw):
        return bytes(bytearray(self.blocks[str(locator).split("+")[0]]))


def test_extract_memory_is_bounded_by_blocks_in_flight_and_the_cache(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    block = 256 * KiB
    rng = random.Random(5)
    with DatasetWriter(store, block_size=block) as w:
        for i in range(4000):  # 10 MiB in 40 blocks
            w.add_bytes(f"d{i % 10}/f{i:05}", rng.randbytes(2560))
        receipt = w.finish()
    copying = CopyingStore(store, [b.locator for b in receipt.blocks] + [receipt.locator])
    reader = DatasetReader(copying, receipt.locator, cache=MemoryBlockCache(2 * block), threads=2)  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        reader.extract(tmp_path / "out", max_open=8)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        reader.close()
    assert len(receipt.blocks) == 40
    # cache (2 blocks) + in flight (2) + the block being written + per-file bookkeeping: far below
    # 10 MiB. (The bookkeeping of files written but not yet made durable and renamed grows while
    # the committer lags on a loaded machine: 3.39 MB was seen once against a 3.31 MB bound.)
    assert peak < 5 * block + 3_000 * KiB, peak
    assert sum(1 for p in (tmp_path / "out").rglob("*") if p.is_file()) == 4000


def test_interleaved_files_with_one_open_temp_file_are_written_whole(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    blocks = [os.urandom(1000) for _ in range(3)]
    locs = [store.put(b) for b in blocks]
    # a takes block 0 and 2, b takes block 1 and 0: files are open across blocks, reopened with max_open=1
    manifest = Manifest.from_files({
        "a": [Segment(locs[0], 0, 500), Segment(locs[2], 0, 1000)],
        "b": [Segment(locs[1], 0, 1000), Segment(locs[0], 500, 500)],
        "c/d": [Segment(locs[2], 10, 20)],
    })
    reader = DatasetReader.from_manifest(store, manifest)
    reader.extract(tmp_path / "out", max_open=1)
    assert (tmp_path / "out" / "a").read_bytes() == blocks[0][:500] + blocks[2]
    assert (tmp_path / "out" / "b").read_bytes() == blocks[1] + blocks[0][500:]
    assert (tmp_path / "out" / "c" / "d").read_bytes() == blocks[2][10:30]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a", "b", "c", "d"]


def test_a_failing_block_leaves_only_finished_files(tmp_path):
    store = LocalStore(tmp_path / "store", fsync=False)
    rng = random.Random(7)
    files = {f"f{i:02}": rng.randbytes(20 * KiB) for i in range(12)}  # 240 KiB in 64 KiB blocks
    with DatasetWriter(store, block_size=64 * KiB) as w:
        for path, data in files.items():
            w.add_bytes(path, data)
        receipt = w.finish()
    third = receipt.blocks[2].locator.split("+")[0]
    failing = FailingStore(store, third)
    reader = DatasetReader(failing, receipt.locator, threads=1)  # type: ignore[arg-type]
    with pytest.raises(BlockNotFound):
        reader.extract(tmp_path / "out")
    left = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert left, "files before the failing block were finished"
    assert all(files[name] == data for name, data in left.items())  # no torn file, no temp file
    assert len(left) < len(files)
    assert max(failing.gets.values()) == 1


def test_the_reading_at_scale_example_in_docs_datasets_md_runs():
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    section = text[text.index("## Reading at scale"):text.index("## Manifests at scale")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/datasets.md", "exec"), {})


def _small_files_dataset(tmp_path: Path, count: int) -> tuple[LocalStore, str, dict[str, bytes]]:
    store = LocalStore(tmp_path / "store", fsync=False)
    rng = random.Random(11)
    files = {f"d{i % 7}/f{i:04}": rng.randbytes(rng.randrange(0, 3 * KiB)) for i in range(count)}
    with DatasetWriter(store, block_size=64 * KiB) as w:
        for path, data in files.items():
            w.add_bytes(path, data)
        receipt = w.finish()
    return store, receipt.locator, files


def test_no_extracted_file_is_renamed_into_place_before_a_sync_covering_it_returned(tmp_path, monkeypatch):
    """The crash guarantee: a file visible under its name has durable content. Every rename of a
    temp file must come after the sync (syncfs or fsync) of a batch that held it returned."""
    from keepstore.datasets import durable

    store, locator, files = _small_files_dataset(tmp_path, 600)
    synced: set[str] = set()
    renamed: list[str] = []
    real_sync, real_replace = durable.Durability.sync, os.replace

    def sync(self, batch):
        real_sync(self, batch)
        synced.update(path for path, _directory in batch)

    def replace(src, dst):
        if str(src).endswith(".partial"):
            assert src in synced, f"{dst} renamed into place before its content was synced"
            renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(durable.Durability, "sync", sync)
    monkeypatch.setattr(os, "replace", replace)
    with DatasetReader(store, locator) as reader:
        assert reader.extract(tmp_path / "out") == sum(map(len, files.values()))
    monkeypatch.undo()
    assert len(renamed) == len(files)  # empty files too
    for path, data in files.items():
        assert (tmp_path / "out" / path).read_bytes() == data
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_a_failing_sync_leaves_no_file_of_its_batch_and_no_temp_file(tmp_path, monkeypatch):
    import errno

    from keepstore.datasets import durable

    store, locator, _files = _small_files_dataset(tmp_path, 50)

    def failing(path):
        raise OSError(errno.EIO, "injected write-back error", path)

    monkeypatch.setattr(durable, "_syncfs", failing)
    monkeypatch.setattr(durable, "fsync_path", failing)
    with DatasetReader(store, locator) as reader, pytest.raises(OSError, match="injected"):
        reader.extract(tmp_path / "out")
    left = [p for p in (tmp_path / "out").rglob("*") if not p.is_dir()]
    assert left == []  # nothing synced, so nothing renamed; every temp file removed


def test_durability_covers_a_batch_on_a_syncfs_filesystem_with_one_syncfs():
    from keepstore.datasets.durable import Durability

    calls: list[tuple[str, str]] = []
    devices = {"/a": 1, "/a/sub": 1, "/b": 2, "/fuse": None}
    d = Durability(device=devices.__getitem__, fsync=lambda p: calls.append(("fsync", p)),
                   syncfs=lambda p: calls.append(("syncfs", p)), syncfs_min_files=4)
    d.sync([(f"/a/{i}", "/a") for i in range(50)] + [(f"/a/sub/{i}", "/a/sub") for i in range(50)])
    assert calls == [("syncfs", "/a")]  # one call for 100 files on one filesystem
    calls.clear()
    d.sync([("/b/x", "/b"), ("/fuse/y", "/fuse"), ("/fuse/z", "/fuse")])
    # too few files on /b to be worth a syncfs (it writes out everything dirty there); FUSE never
    assert sorted(calls) == [("fsync", "/b/x"), ("fsync", "/fuse/y"), ("fsync", "/fuse/z")]
    d.close()


def test_syncfs_is_only_trusted_on_filesystems_known_to_make_it_durable(tmp_path):
    from keepstore.datasets.durable import syncfs_device

    assert syncfs_device("/proc") is None  # procfs: not a filesystem syncfs makes anything durable on
    device = syncfs_device(str(tmp_path))
    assert device is None or device == os.stat(tmp_path).st_dev
