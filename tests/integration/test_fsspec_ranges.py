"""Concurrent range reads through ``keep://``: cat_ranges, cat, and columnar (Parquet) access, counted on keep serve."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec.parquet
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keepstore import BlockStore, Locator
from keepstore.client import HedgePolicy
from keepstore.contrib.fsspec import KeepFileSystem
from keepstore.datasets import DatasetWriter
from keepstore.locator import LocatorLike
from keepstore.testing import KeepCluster

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_fsspec"
BLOCK = 128 * 1024
ROWS = 20_000
COLUMNS = [f"c{i}" for i in range(24)]
# The tests count block GETs: a hedge (after 0.1 s without a first byte, which a busy machine
# gives) would add one. test_hedged_reads tests hedging.
NO_HEDGE = HedgePolicy(enabled=False)


class GatedStore(BlockStore):
    """A real client; once armed with *n*, its next *n* GETs each wait until all *n* are under
    way at once, so serial fetching breaks the barrier (`BrokenBarrierError`) instead of passing."""

    def __init__(self, inner: BlockStore) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(1)
        self.lock = threading.Lock()
        self.left = 0

    def arm(self, n: int) -> None:
        with self.lock:
            self.barrier, self.left = threading.Barrier(n, timeout=20), n

    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        with self.lock:
            wait, self.left = self.left > 0, self.left - 1
            barrier = self.barrier
        if wait:
            barrier.wait()
        return self.inner.get(locator, request_id=request_id)

    def put(self, data: bytes, **options: object) -> Locator:  # type: ignore[override]
        return self.inner.put(data, **options)  # type: ignore[arg-type]

    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        return self.inner.head(locator, request_id=request_id)


def block_gets(cluster: KeepCluster) -> list[str]:
    """The md5 of every block GET the cluster's servers answered with 200."""
    return [r.path.strip("/").split("+")[0] for s in cluster.servers for r in s.requests
            if r.method == "GET" and r.status == 200 and len(r.path.strip("/").split("+")[0]) == 32]


def clear_requests(cluster: KeepCluster) -> None:
    for server in cluster.servers:
        server.requests.clear()


def blocks_under(fs: KeepFileSystem, path: str, ranges: Iterable[tuple[int, int]]) -> set[str]:
    """The md5s of the blocks holding ``[start, end)`` *ranges* of *path*."""
    tree, _head, rel = fs.open_tree(path)
    file = tree.manifest.file(rel)
    return {seg.locator.md5 for start, end in ranges for _i, _at, seg in file.segments_in(start, end - start)}


@pytest.fixture
def big() -> bytes:
    return random.Random(5).randbytes(8 * BLOCK + 99)


@pytest.fixture
def table() -> pa.Table:
    rng = np.random.default_rng(9)
    return pa.table({name: rng.random(ROWS) for name in COLUMNS})


@pytest.fixture
def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=ROWS // 2, compression="none", use_dictionary=False)
    return sink.getvalue()


@pytest.fixture
def loc(keep_cluster: KeepCluster, big: bytes, parquet: bytes) -> str:
    with keep_cluster.client() as client, DatasetWriter(client, block_size=BLOCK) as writer:
        writer.add_bytes("big.bin", big)
        writer.add_bytes("t.parquet", parquet)
        for i in range(4):
            writer.add_bytes(f"small/{i}.txt", f"file {i}\n".encode())
        return writer.finish().locator


@pytest.fixture
def fs(keep_cluster: KeepCluster) -> Iterator[KeepFileSystem]:
    with keep_cluster.client(hedge=NO_HEDGE) as client:
        fs = KeepFileSystem(store=client, skip_instance_cache=True)
        yield fs
        fs.close()


def test_cat_ranges_returns_each_range(fs: KeepFileSystem, loc: str, big: bytes) -> None:
    path = f"keep://{loc}/big.bin"
    starts, ends = [0, BLOCK - 3, 5 * BLOCK, -10, 7 * BLOCK], [10, BLOCK + 3, 5 * BLOCK + 1, None, -5]
    got = fs.cat_ranges([path] * 5, starts, ends)
    assert got == [big[0:10], big[BLOCK - 3:BLOCK + 3], big[5 * BLOCK:5 * BLOCK + 1], big[-10:], big[7 * BLOCK:-5]]


def test_ranges_in_one_block_cost_one_get(fs: KeepFileSystem, keep_cluster: KeepCluster, loc: str,
                                          big: bytes) -> None:
    path = f"keep://{loc}/big.bin"
    fs.ls(f"keep://{loc}")  # the manifest, out of the count
    clear_requests(keep_cluster)
    ranges = [(2 * BLOCK + 10 * i, 2 * BLOCK + 10 * i + 7) for i in range(20)] + [(6 * BLOCK + 1, 6 * BLOCK + 2)]
    got = fs.cat_ranges([path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])
    assert got == [big[a:b] for a, b in ranges]
    gets = block_gets(keep_cluster)
    assert sorted(gets) == sorted(blocks_under(fs, path, ranges)) and len(gets) <= 3


def test_cat_ranges_fetches_blocks_concurrently(keep_cluster: KeepCluster, loc: str, big: bytes) -> None:
    with keep_cluster.client() as client:
        gated = GatedStore(client)
        fs = KeepFileSystem(store=gated, skip_instance_cache=True)
        fs.ls(f"keep://{loc}")  # the manifest, fetched before the gate is armed
        gated.arm(3)
        path = f"keep://{loc}/big.bin"
        got = fs.cat_ranges([path] * 3, [0, 3 * BLOCK, 6 * BLOCK], [5, 3 * BLOCK + 5, 6 * BLOCK + 5])
        assert got == [big[0:5], big[3 * BLOCK:3 * BLOCK + 5], big[6 * BLOCK:6 * BLOCK + 5]]
        fs.close()


def test_cat_of_many_paths_fetches_concurrently(keep_cluster: KeepCluster, loc: str) -> None:
    with keep_cluster.client() as client, DatasetWriter(client, block_size=BLOCK) as writer:
        for i in range(3):  # a block each
            writer.add_bytes(f"f{i}", bytes([i]) * BLOCK)
        many = writer.finish().locator
    with keep_cluster.client() as client:
        gated = GatedStore(client)
        fs = KeepFileSystem(store=gated, skip_instance_cache=True)
        fs.ls(f"keep://{many}")
        gated.arm(3)
        got = fs.cat(f"keep://{many}/*")
        assert got == {f"{many}/f{i}": bytes([i]) * BLOCK for i in range(3)}
        fs.close()


def test_cat_reports_errors_as_asked(fs: KeepFileSystem, loc: str) -> None:
    paths = [f"keep://{loc}/small/0.txt", f"keep://{loc}/small/nope.txt"]
    with pytest.raises(FileNotFoundError):
        fs.cat(paths)
    assert fs.cat(paths, on_error="omit") == {f"{loc}/small/0.txt": b"file 0\n"}
    returned = fs.cat(paths, on_error="return")
    assert isinstance(returned[f"{loc}/small/nope.txt"], FileNotFoundError)
    assert fs.cat(f"keep://{loc}/small", recursive=True) == {f"{loc}/small/{i}.txt": f"file {i}\n".encode()
                                                            for i in range(4)}


# -- columnar reads ----------------------------------------------------------------------------------


def column_ranges(parquet: bytes, columns: list[str]) -> list[tuple[int, int]]:
    """The byte ranges a reader of *columns* needs: their chunks in every row group, and the footer."""
    meta = pq.ParquetFile(io.BytesIO(parquet)).metadata
    out = [(len(parquet) - 8 - meta.serialized_size, len(parquet))]
    for rg in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(rg).column(c)
            if chunk.path_in_schema in columns:
                start = chunk.dictionary_page_offset or chunk.data_page_offset
                out.append((start, start + chunk.total_compressed_size))
    return out


WANT = ["c1", "c7", "c8"]


def test_parquet_file_spans_many_blocks(fs: KeepFileSystem, loc: str, parquet: bytes) -> None:
    total = blocks_under(fs, f"keep://{loc}/t.parquet", [(0, len(parquet))])
    needed = blocks_under(fs, f"keep://{loc}/t.parquet", column_ranges(parquet, WANT))
    assert len(total) >= 12 and len(needed) <= len(total) // 2  # the premise of the tests below


def test_pandas_read_parquet_of_a_few_columns_fetches_only_their_blocks(
    fs: KeepFileSystem, keep_cluster: KeepCluster, loc: str, parquet: bytes, table: pa.Table
) -> None:
    path = f"keep://{loc}/t.parquet"
    fs.ls(f"keep://{loc}")
    clear_requests(keep_cluster)
    df = pd.read_parquet(path, columns=WANT, filesystem=fs)
    pd.testing.assert_frame_equal(df, table.select(WANT).to_pandas())
    gets = block_gets(keep_cluster)
    assert len(gets) == len(set(gets))  # each block once
    footer_read = (len(parquet) - 64 * 1024, len(parquet))  # Arrow reads the last 64 KiB for the footer
    assert set(gets) <= blocks_under(fs, path, [*column_ranges(parquet, WANT), footer_read])


def test_fsspec_open_parquet_file_reads_columns_through_cat_ranges(
    fs: KeepFileSystem, keep_cluster: KeepCluster, loc: str, parquet: bytes, table: pa.Table
) -> None:
    path = f"keep://{loc}/t.parquet"
    fs.ls(f"keep://{loc}")
    clear_requests(keep_cluster)
    with fsspec.parquet.open_parquet_file(path, fs=fs, columns=WANT, engine="pyarrow", max_gap=0,
                                          footer_sample_size=BLOCK) as f:
        got = pq.read_table(f, columns=WANT)
    assert got.equals(table.select(WANT))
    gets = block_gets(keep_cluster)
    assert len(gets) == len(set(gets))
    footer_sample = (len(parquet) - BLOCK, len(parquet))
    assert set(gets) <= blocks_under(fs, path, [*column_ranges(parquet, WANT), footer_sample])


def test_a_csv_read_from_its_start_is_fetched_ahead(fs: KeepFileSystem, loc: str, big: bytes) -> None:
    with fs.open(f"keep://{loc}/big.bin") as f:
        assert f.read(10) == big[:10]
    assert fs.blocks.wait_idle(timeout=30)
    second = fs.open_tree(f"keep://{loc}/big.bin")[0].manifest.file("big.bin").segments[1].locator
    assert fs.blocks.cache.get(second) is not None  # read ahead of the streaming reader


def test_a_seeking_reader_gets_no_read_ahead(fs: KeepFileSystem, keep_cluster: KeepCluster, loc: str,
                                             big: bytes) -> None:
    fs.ls(f"keep://{loc}")
    clear_requests(keep_cluster)
    with fs.open(f"keep://{loc}/big.bin") as f:
        f.seek(-10, io.SEEK_END)
        assert f.read() == big[-10:]
        f.seek(3 * BLOCK)
        assert f.read(BLOCK) == big[3 * BLOCK:4 * BLOCK]
        assert f.read(10) == big[4 * BLOCK:4 * BLOCK + 10]  # continues, but not a stream from the start
    assert fs.blocks.wait_idle(timeout=30)
    assert sorted(block_gets(keep_cluster)) == sorted(blocks_under(
        fs, f"keep://{loc}/big.bin", [(len(big) - 10, len(big)), (3 * BLOCK, 4 * BLOCK + 10)]))


def test_bench_fsspec_runs_small_and_reports_blocks(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--size-mib", "6", "--block-mib", "1", "--reps", "1",
                           "--json", str(out), "--tmp", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert {"meta", "results"} <= results.keys() and results["meta"]["blocks_in_file"] >= 6
    whole = results["results"]["whole"]
    for case in ("adjacent/pandas", "adjacent/ranges", "spread/pandas", "spread/ranges"):
        got = results["results"][case]
        assert got["only_needed"] is True and got["bytes"] < whole["bytes"], case
    assert results["results"]["adjacent/ranges"]["gets"] <= results["results"]["adjacent/ranges"]["blocks_needed"] + 1
