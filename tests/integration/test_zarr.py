"""zarr arrays in datasets: written into one inside a transaction, or stored from a local tree, read back by mapper."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr

from keepstore import LocalStore
from keepstore.contrib.fsspec import KeepFileSystem

DOCS = Path(__file__).resolve().parents[2] / "docs" / "fsspec.md"


def doc_block(marker: str) -> str:
    blocks = [part.split("```", 1)[0] for part in DOCS.read_text().split("```python\n")[1:]]
    found = [b for b in blocks if b.startswith(f"# {marker}\n")]
    assert len(found) == 1, marker
    return found[0]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", fsync=False)


def test_a_zarr_store_written_locally_and_put_reads_back(store: LocalStore, tmp_path: Path) -> None:
    want = np.random.default_rng(2).random((60, 40))
    local = zarr.open_array(str(tmp_path / "local.zarr"), mode="w", shape=want.shape, chunks=(16, 16), dtype="f8")
    local[:] = want
    fs = KeepFileSystem(store=store, skip_instance_cache=True)
    loc = fs.put(str(tmp_path / "local.zarr"), "keep://new/arrays/a.zarr", recursive=True)
    assert fs.isfile(f"keep://{loc}/arrays/a.zarr/zarr.json")
    array = zarr.open_array(fsspec.get_mapper(f"keep://{loc}/arrays/a.zarr", store=store), mode="r")
    np.testing.assert_array_equal(array[:], want)
    np.testing.assert_array_equal(array[17:33, 5], want[17:33, 5])


def test_a_zarr_store_written_in_a_transaction_is_one_dataset(store: LocalStore) -> None:
    fs = KeepFileSystem(store=store, skip_instance_cache=True)
    with fs.transaction as tx:
        z = zarr.open_array(fs.get_mapper("keep://new/z.zarr"), mode="w", shape=(30,), chunks=(7,), dtype="i8")
        z[:] = np.arange(30)
    assert tx.locator is not None
    chunks = [p for p in fs.find(f"keep://{tx.locator}") if "/c/" in p]
    assert len(chunks) == 5  # every chunk file landed in the one dataset
    np.testing.assert_array_equal(zarr.open_array(fs.get_mapper(f"keep://{tx.locator}/z.zarr"), mode="r")[:],
                                  np.arange(30))


def test_writing_into_an_existing_dataset_is_refused(store: LocalStore) -> None:
    fs = KeepFileSystem(store=store, skip_instance_cache=True)
    loc = fs.pipe_file("keep://new/x", b"1")
    mapper = fs.get_mapper(f"keep://{loc}/z.zarr")
    with pytest.raises(PermissionError):
        mapper["zarr.json"] = b"{}"


def test_the_docs_zarr_example_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    KeepFileSystem.clear_instance_cache()  # the example's from_env() store is this test's
    try:
        namespace: dict[str, object] = {}
        exec(compile(doc_block("zarr"), "docs/fsspec.md", "exec"), namespace)
    finally:
        KeepFileSystem.clear_instance_cache()
    assert namespace["tx"].locator is not None  # type: ignore[attr-defined]
