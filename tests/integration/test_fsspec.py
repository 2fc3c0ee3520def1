"""KeepFileSystem: ``keep://`` through fsspec and pandas, over a LocalStore and a ``keep serve`` cluster."""

from __future__ import annotations

import io
import random
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from keepstore import KeepError, LocalStore
from keepstore.contrib.fsspec import KeepFileSystem
from keepstore.datasets import DatasetError, DatasetReader, DatasetWriter
from keepstore.testing import KeepCluster

BLOCK = 256 * 1024
CSV = "name,value\nalpha,1\nbeta,2\ngamma,3\n"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", fsync=False)


@pytest.fixture
def big() -> bytes:
    return random.Random(3).randbytes(5 * BLOCK + 77)


@pytest.fixture
def loc(store: LocalStore, big: bytes) -> str:
    with DatasetWriter(store, block_size=BLOCK) as writer:
        writer.add_bytes("data/table.csv", CSV.encode())
        writer.add_bytes("data/raw/big.bin", big)
        writer.add_bytes("README", b"read me\n")
        writer.add_directory("empty")
        return writer.finish().locator


@pytest.fixture
def fs(store: LocalStore) -> KeepFileSystem:
    return KeepFileSystem(store=store, skip_instance_cache=True)


def test_keep_protocol_is_registered_through_the_entry_point() -> None:
    assert fsspec.get_filesystem_class("keep") is KeepFileSystem


def test_ls_lists_a_directory_with_details(fs: KeepFileSystem, loc: str) -> None:
    assert fs.ls(f"keep://{loc}", detail=False) == [f"{loc}/README", f"{loc}/data", f"{loc}/empty"]
    entries = {e["name"]: e for e in fs.ls(f"keep://{loc}/data")}
    assert entries[f"{loc}/data/table.csv"] == {"name": f"{loc}/data/table.csv", "size": len(CSV), "type": "file"}
    assert entries[f"{loc}/data/raw"]["type"] == "directory"


def test_info_find_exists_isdir(fs: KeepFileSystem, loc: str, big: bytes) -> None:
    assert fs.info(f"keep://{loc}/data/raw/big.bin")["size"] == len(big)
    assert fs.info(f"{loc}/data")["type"] == "directory"
    assert fs.find(f"keep://{loc}") == [f"{loc}/README", f"{loc}/data/raw/big.bin", f"{loc}/data/table.csv"]
    assert fs.exists(f"keep://{loc}/README") and not fs.exists(f"keep://{loc}/nope")
    assert fs.isdir(f"keep://{loc}/empty") and fs.isfile(f"keep://{loc}/README")


def test_cat_file_with_ranges(fs: KeepFileSystem, loc: str, big: bytes) -> None:
    path = f"keep://{loc}/data/raw/big.bin"
    assert fs.cat_file(path) == big
    assert fs.cat_file(path, start=BLOCK - 5, end=BLOCK + 5) == big[BLOCK - 5:BLOCK + 5]
    assert fs.cat_file(path, start=-10) == big[-10:]
    assert fs.cat_file(path, start=10, end=-10) == big[10:-10]
    assert fs.cat_file(path, start=len(big) + 10) == b""


def test_open_is_seekable_and_reads_across_blocks(fs: KeepFileSystem, loc: str, big: bytes) -> None:
    with fs.open(f"keep://{loc}/data/raw/big.bin", block_size=64 * 1024) as f:
        assert f.seekable()
        f.seek(3 * BLOCK - 2)
        assert f.read(4) == big[3 * BLOCK - 2:3 * BLOCK + 2]
        f.seek(-7, io.SEEK_END)
        assert f.read() == big[-7:]
        f.seek(0)
        assert f.read() == big


def test_missing_paths_raise_file_not_found(fs: KeepFileSystem, loc: str) -> None:
    for path in (f"keep://{loc}/nope", f"keep://{loc}/data/nope.csv"):
        with pytest.raises(FileNotFoundError):
            fs.info(path)
        with pytest.raises(FileNotFoundError):
            fs.cat_file(path)
        with pytest.raises(FileNotFoundError):
            fs.open(path)
    with pytest.raises(FileNotFoundError):
        fs.ls(f"keep://{loc}/nope")
    with pytest.raises(FileNotFoundError):
        fs.info("keep://" + "0" * 32 + "+5/x")  # no such dataset
    with pytest.raises(FileNotFoundError):
        fs.info("keep://not-a-locator/x")


def test_fsspec_open_with_storage_options(store: LocalStore, loc: str) -> None:
    with fsspec.open(f"keep://{loc}/data/table.csv", "rt", local_store=str(store.root)) as f:
        assert f.read() == CSV


def test_pandas_reads_csv_from_a_local_store(store: LocalStore, loc: str) -> None:
    df = pd.read_csv(f"keep://{loc}/data/table.csv", storage_options={"local_store": str(store.root)})
    assert list(df["name"]) == ["alpha", "beta", "gamma"] and df["value"].sum() == 6


def test_pipe_stores_a_new_dataset_and_returns_its_locator(fs: KeepFileSystem, store: LocalStore) -> None:
    new = fs.pipe({"keep://new/a.txt": b"A", "keep://new/sub/b.txt": b"BB"})
    assert new is not None
    reader = DatasetReader(store, new)
    assert sorted(f.path for f in reader.files()) == ["a.txt", "sub/b.txt"]
    assert fs.cat_file(f"keep://{new}/sub/b.txt") == b"BB"
    assert fs.pipe_file("keep://new/one", b"1") != new


def test_put_stores_a_local_tree_as_a_new_dataset(fs: KeepFileSystem, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "x.csv").write_text(CSV)
    (src / "d" / "y.bin").write_bytes(b"\x00" * 1000)
    new = fs.put(str(src), "keep://new/", recursive=True)
    assert fs.find(f"keep://{new}") == [f"{new}/d/y.bin", f"{new}/x.csv"]
    one = fs.put_file(str(src / "x.csv"), "keep://new/renamed.csv")
    assert fs.ls(f"keep://{one}", detail=False) == [f"{one}/renamed.csv"]


def test_datasets_are_immutable(fs: KeepFileSystem, loc: str) -> None:
    with pytest.raises(PermissionError):
        fs.pipe_file(f"keep://{loc}/README", b"changed")
    with pytest.raises(PermissionError):
        fs.open(f"keep://{loc}/README", "wb")
    with pytest.raises(PermissionError):
        fs.rm_file(f"keep://{loc}/README")


# -- over a keep serve cluster -------------------------------------------------------------------


@pytest.fixture
def cluster_loc(keep_cluster: KeepCluster, big: bytes) -> str:
    with keep_cluster.client() as client, DatasetWriter(client, block_size=BLOCK) as writer:
        writer.add_bytes("data/table.csv", CSV.encode())
        writer.add_bytes("data/raw/big.bin", big)
        return writer.finish().locator


def test_pandas_reads_csv_from_a_cluster_with_storage_options(keep_cluster: KeepCluster, cluster_loc: str) -> None:
    options = {"services": keep_cluster.urls, "token": keep_cluster.token}
    df = pd.read_csv(f"keep://{cluster_loc}/data/table.csv", storage_options=options)
    assert list(df["value"]) == [1, 2, 3]


def test_pandas_reads_csv_from_a_cluster_configured_by_environment(
    keep_cluster: KeepCluster, cluster_loc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in keep_cluster.env().items():
        monkeypatch.setenv(name, value)
    df = pd.read_csv(f"keep://{cluster_loc}/data/table.csv")
    assert list(df["name"]) == ["alpha", "beta", "gamma"]


def test_cluster_reads_seek_and_range(keep_cluster: KeepCluster, cluster_loc: str, big: bytes) -> None:
    fs = KeepFileSystem(services=keep_cluster.urls, token=keep_cluster.token, skip_instance_cache=True)
    with fs.open(f"keep://{cluster_loc}/data/raw/big.bin") as f:
        f.seek(4 * BLOCK + 1)
        assert f.read(100) == big[4 * BLOCK + 1:4 * BLOCK + 101]
    assert fs.cat_file(f"keep://{cluster_loc}/data/raw/big.bin", 5, 50) == big[5:50]
    new = fs.pipe("keep://new/out.csv", b"a\n1\n")
    assert pd.read_csv(fs.open(f"keep://{new}/out.csv"))["a"].tolist() == [1]


def test_token_is_never_in_repr_or_errors(keep_cluster: KeepCluster, cluster_loc: str) -> None:
    fs = KeepFileSystem(services=keep_cluster.urls, token=keep_cluster.token, retries=0, skip_instance_cache=True)
    assert keep_cluster.token not in repr(fs)
    fs.ls(f"keep://{cluster_loc}")  # the manifest is read; the data blocks are not yet
    for server in keep_cluster.servers:
        server.stop()
    with pytest.raises(KeepError) as exc:
        fs.cat_file(f"keep://{cluster_loc}/data/raw/big.bin")
    assert keep_cluster.token not in str(exc.value) and keep_cluster.token not in repr(exc.value)


# -- docs/fsspec.md --------------------------------------------------------------------------------


def doc_blocks(name: str, fence: str) -> list[str]:
    """The fenced code blocks of one language in a file under docs/."""
    text = (Path(__file__).resolve().parents[2] / "docs" / name).read_text()
    return [part.split("```", 1)[0] for part in text.split(f"```{fence}\n")[1:]]


def doc_block(marker: str) -> str:
    """The python block of docs/fsspec.md whose first line is ``# <marker>``."""
    found = [b for b in doc_blocks("fsspec.md", "python") if b.startswith(f"# {marker}\n")]
    assert len(found) == 1, marker
    return found[0]


def run_doc(code: str, namespace: dict[str, object] | None = None) -> dict[str, object]:
    KeepFileSystem.clear_instance_cache()  # the example's from_env() store is this test's
    namespace = {} if namespace is None else namespace
    try:
        exec(compile(code, "docs/fsspec.md", "exec"), namespace)
    finally:
        KeepFileSystem.clear_instance_cache()
    return namespace


def test_the_docs_example_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    run_doc(doc_blocks("fsspec.md", "python")[0])


def test_the_docs_writing_example_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    done = run_doc(doc_block("writing"))
    assert isinstance(done["loc"], str) and done["both"] not in (done["loc"], done["single"])


def test_the_docs_storage_options_example_runs(keep_cluster: KeepCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    with keep_cluster.client() as client, DatasetWriter(client) as writer:
        writer.add_bytes("tables/scores.csv", b"name,score\nada,3\nbob,5\n")
        loc = writer.finish().locator
    monkeypatch.setenv("KEEP_TOKEN", keep_cluster.token)
    done = run_doc(doc_block("pandas: storage options"), {"loc": loc, "services": keep_cluster.urls})
    assert done["df"]["score"].sum() == 8  # type: ignore[index]


# -- writes: files, transactions, combined datasets ------------------------------------------------


def test_pandas_to_parquet_in_a_transaction_stores_one_dataset(fs: KeepFileSystem, store: LocalStore,
                                                              tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    with fs.transaction as tx:
        df.to_parquet("keep://new/tables/t.parquet", filesystem=fs)
        with fs.open("keep://new/tables/t.csv", "w") as f:
            df.to_csv(f, index=False)
        assert fs.pipe_file("keep://new/README", b"two tables\n") is None  # stored when the block ends
    assert tx.locator is not None and fs.last_dataset == tx.locator
    assert fs.find(f"keep://{tx.locator}") == [f"{tx.locator}/{p}" for p in ("README", "tables/t.csv",
                                                                              "tables/t.parquet")]
    pd.testing.assert_frame_equal(pd.read_parquet(f"keep://{tx.locator}/tables/t.parquet", filesystem=fs), df)
    assert pd.read_csv(fs.open(f"keep://{tx.locator}/tables/t.csv"))["a"].tolist() == [1, 2, 3]


def test_a_failed_transaction_stores_no_dataset(fs: KeepFileSystem, store: LocalStore) -> None:
    before = {p.name for p in store.root.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError), fs.transaction as tx:
        with fs.open("keep://new/a.txt", "wb") as f:
            f.write(b"never stored")
        raise RuntimeError("stop")
    assert tx.locator is None and fs.last_dataset is None
    assert {p.name for p in store.root.rglob("*") if p.is_file()} == before  # the file was never committed


def test_a_file_written_outside_a_transaction_is_a_dataset_of_its_own(fs: KeepFileSystem) -> None:
    with fs.open("keep://new/out/data.bin", "wb") as f:
        f.write(b"\x01" * 1000)
        f.write(b"\x02" * 10)
    assert f.locator is not None and fs.last_dataset == f.locator
    assert fs.cat_file(f"keep://{f.locator}/out/data.bin") == b"\x01" * 1000 + b"\x02" * 10
    df = pd.DataFrame({"v": [1.5, 2.5]})
    df.to_parquet("keep://new/v.parquet", filesystem=fs)  # pandas: the locator is reported on the filesystem
    pd.testing.assert_frame_equal(pd.read_parquet(f"keep://{fs.last_dataset}/v.parquet", filesystem=fs), df)


def test_combine_makes_one_dataset_of_several_without_copying(fs: KeepFileSystem, store: LocalStore,
                                                              loc: str, big: bytes) -> None:
    other = fs.pipe({"keep://new/extra/x.txt": b"x"})
    assert other is not None
    blocks_before = sum(1 for p in store.root.rglob("*") if p.is_file())
    both = fs.combine([loc, f"keep://{other}"])
    assert sum(1 for p in store.root.rglob("*") if p.is_file()) == blocks_before + 1  # just the manifest
    assert fs.cat_file(f"keep://{both}/data/raw/big.bin") == big
    assert fs.cat_file(f"keep://{both}/extra/x.txt") == b"x" and fs.isdir(f"keep://{both}/empty")
    assert fs.ls(f"keep://{fs.combine([f'keep://{loc}/data/raw'])}", detail=False)[0].endswith("/big.bin")
    with pytest.raises(DatasetError):
        fs.combine([loc, loc])


def test_writes_outside_keep_new_are_refused_with_a_hint(fs: KeepFileSystem, loc: str) -> None:
    with pytest.raises(PermissionError, match="keep://new/"):
        fs.open(f"keep://{loc}/x", "wb")
    with pytest.raises(PermissionError, match="immutable"):
        fs.open(f"keep://{loc}/README", "ab")
    fs.makedirs("keep://new/some/dir", exist_ok=True)  # what writers call first: nothing to do
    with pytest.raises(PermissionError):
        fs.mkdir(f"keep://{loc}/dir")


def test_errors_name_each_url_once(fs: KeepFileSystem, loc: str) -> None:
    for call in (lambda: fs.info("keep://nope/x"), lambda: fs.cat_file(f"keep://{loc}/nope"),
                 lambda: fs.open(f"keep://{loc}/README", "ab"), lambda: fs.rm_file(f"keep://{loc}/README")):
        with pytest.raises(OSError) as exc:
            call()
        assert "keep://" in str(exc.value) and "keep://keep:" not in str(exc.value)
    assert fs.unstrip_protocol("keep://keep://x/y") == "keep://x/y"
