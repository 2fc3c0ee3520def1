"""Dask on a real cluster: a LocalCluster of worker processes reads ``keep://`` CSV and Parquet from keep serve."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client

from keepstore.contrib.fsspec import KeepFileSystem
from keepstore.testing import KeepCluster

DOCS = Path(__file__).resolve().parents[2] / "docs" / "fsspec.md"
NAMES = ["ada", "bob", "cy", "dee"]


def doc_block(marker: str) -> str:
    """The ```python block of docs/fsspec.md whose first line is ``# <marker>``."""
    blocks = [part.split("```", 1)[0] for part in DOCS.read_text().split("```python\n")[1:]]
    found = [b for b in blocks if b.startswith(f"# {marker}\n")]
    assert len(found) == 1, marker
    return found[0]


def write_tables(root: Path) -> None:
    rng = np.random.default_rng(4)
    (root / "scores").mkdir(parents=True)
    (root / "events").mkdir()
    for i in range(3):
        n = 3000
        pd.DataFrame({"name": rng.choice(NAMES, n), "score": rng.integers(0, 100, n)}).to_csv(
            root / "scores" / f"part-{i}.csv", index=False)
    for i in range(2):
        n = 4000
        frame = pd.DataFrame({"kind": rng.choice(["a", "b"], n), "value": rng.random(n), "pad": rng.random(n)})
        frame.to_parquet(root / "events" / f"part-{i}.parquet", row_group_size=1000)


@pytest.fixture(scope="module")
def local_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tables")
    write_tables(root)
    return root


@pytest.fixture(scope="module")
def keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeepCluster]:
    with KeepCluster(2, tmp_path_factory.mktemp("keep")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def loc(keep: KeepCluster, local_tables: Path) -> str:
    with keep.client() as client:
        fs = KeepFileSystem(store=client, skip_instance_cache=True)
        loc = fs.put(str(local_tables), "keep://new/", recursive=True)
        assert loc is not None
        return loc


@pytest.fixture(scope="module")
def session(keep: KeepCluster, loc: str) -> Iterator[dict[str, Any]]:
    """docs/fsspec.md's "dask: start" block run once: its cluster and client serve every test here."""
    namespace: dict[str, Any] = {"keep_env": keep.env(), "services": keep.urls, "token": keep.token, "loc": loc}
    exec(compile(doc_block("dask: start"), "docs/fsspec.md", "exec"), namespace)
    try:
        yield namespace
    finally:
        namespace["client"].close()
        namespace["cluster"].close()


@pytest.fixture
def client_env(keep: KeepCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The cluster's variables in this (the client's) process too: it lists files and reads footers."""
    for name, value in keep.env().items():
        monkeypatch.setenv(name, value)
    KeepFileSystem.clear_instance_cache()  # an instance built from another environment must not serve
    yield
    KeepFileSystem.clear_instance_cache()


def same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal values, columns and row order (Dask and pandas choose different string dtypes)."""
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)


def worker_pids(client: Client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_the_cluster_has_two_worker_processes(session: dict[str, Any]) -> None:
    pids = worker_pids(session["client"])
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.usefixtures("client_env")
def test_the_docs_dask_example_matches_pandas_reading_locally(session: dict[str, Any], local_tables: Path) -> None:
    exec(compile(doc_block("dask: read"), "docs/fsspec.md", "exec"), session)
    scores = pd.concat(pd.read_csv(p) for p in sorted((local_tables / "scores").glob("*.csv")))
    events = pd.concat(pd.read_parquet(p) for p in sorted((local_tables / "events").glob("*.parquet")))
    assert session["by_name"].to_dict() == scores.groupby("name")["score"].sum().to_dict()
    assert session["mean_value"] == pytest.approx(events["value"].mean())


def test_csv_partitions_are_read_by_the_workers(session: dict[str, Any], keep: KeepCluster, loc: str,
                                                local_tables: Path) -> None:
    client: Client = session["client"]
    frame = dd.read_csv(f"keep://{loc}/scores/*.csv", storage_options={"services": keep.urls, "token": keep.token})
    readers = frame.map_partitions(lambda part: pd.Series([os.getpid()] * len(part)), meta=(None, "int64"))
    got, pids = client.compute([frame, readers], sync=True)
    assert set(pids) <= worker_pids(client)
    want = pd.concat(pd.read_csv(p) for p in sorted((local_tables / "scores").glob("*.csv")))
    same_frame(got, want)


@pytest.mark.usefixtures("client_env")
def test_parquet_read_through_worker_environment_matches_pandas(session: dict[str, Any], loc: str,
                                                                local_tables: Path) -> None:
    client: Client = session["client"]
    assert set(client.run(lambda: os.environ.get("KEEP_SERVICES")).values()) == {session["keep_env"]["KEEP_SERVICES"]}
    got = client.compute(dd.read_parquet(f"keep://{loc}/events/*.parquet"), sync=True)
    want = pd.concat(pd.read_parquet(p) for p in sorted((local_tables / "events").glob("*.parquet")))
    same_frame(got, want)


@pytest.mark.usefixtures("client_env")
def test_the_docs_dask_write_recipe_stores_one_dataset(session: dict[str, Any], local_tables: Path) -> None:
    if "scores" not in session:
        exec(compile(doc_block("dask: read"), "docs/fsspec.md", "exec"), session)
    exec(compile(doc_block("dask: write"), "docs/fsspec.md", "exec"), session)
    scores = pd.concat(pd.read_csv(p) for p in sorted((local_tables / "scores").glob("*.csv")))
    got = session["client"].compute(session["written"], sync=True)
    same_frame(got, scores[scores["score"] > 50])
    fs = KeepFileSystem(**session["options"], skip_instance_cache=True)
    assert fs.ls(f"keep://{session['high']}/high", detail=False) == [
        f"{session['high']}/high/part-{i}.parquet" for i in range(3)]
