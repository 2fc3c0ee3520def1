"""ReadPath: a dataset as lookup/getattr/readdir/read, over a real LocalStore (no FUSE)."""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from keepstore import LocalStore, Locator
from keepstore.datasets import DatasetWriter
from keepstore.datasets.tree import ReadPath, normalize_path
from keepstore.errors import BlockNotFound
from keepstore.locator import LocatorLike

BLOCK = 64 * 1024  # small blocks so files span many of them


class CountingStore(LocalStore):
    """A real LocalStore that records which blocks were fetched, and by which thread."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.fetched: list[str] = []
        self.threads: set[str] = set()
        self._count_lock = threading.Lock()

    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        with self._count_lock:
            self.fetched.append(Locator.parse(str(locator)).md5)
            self.threads.add(threading.current_thread().name)
        return super().get(locator, request_id=request_id)


def write_dataset(store: LocalStore, files: dict[str, bytes], dirs: Iterable[str] = ()) -> str:
    with DatasetWriter(store, block_size=BLOCK) as writer:
        for path, data in files.items():
            writer.add_bytes(path, data)
        for d in dirs:
            writer.add_directory(d)
        return writer.finish().locator


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


@pytest.fixture
def files() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        "small.txt": b"hello\n",
        "empty": b"",
        "data/big.bin": rng.randbytes(10 * BLOCK + 123),
        "data/deeper/x.csv": b"a,b\n1,2\n",
    }


@pytest.fixture
def tree(store: CountingStore, files: dict[str, bytes]) -> Iterator[ReadPath]:
    loc = write_dataset(store, files, dirs=["void"])
    rp = ReadPath(store, loc, mtime=1_700_000_000.0, sequential_slack=BLOCK // 2)
    yield rp
    rp.close()


def test_readdir_lists_names_at_each_level(tree: ReadPath) -> None:
    assert tree.readdir("") == ["data", "empty", "small.txt", "void"]
    assert tree.readdir("/data/") == ["big.bin", "deeper"]
    assert tree.readdir("data/deeper") == ["x.csv"]
    assert tree.readdir("void") == []


def test_lookup_gives_read_only_modes_sizes_and_mtime(tree: ReadPath, files: dict[str, bytes]) -> None:
    root = tree.lookup("/")
    assert root.is_dir and stat.S_ISDIR(root.mode) and root.mode & 0o777 == 0o555
    big = tree.getattr("/data/big.bin")
    assert not big.is_dir and stat.S_ISREG(big.mode) and big.mode & 0o777 == 0o444
    assert big.size == len(files["data/big.bin"])
    assert big.as_stat()["st_mtime"] == 1_700_000_000.0
    assert tree.lookup("empty").size == 0


def test_missing_paths_raise_file_not_found(tree: ReadPath) -> None:
    with pytest.raises(FileNotFoundError):
        tree.lookup("nope")
    with pytest.raises(FileNotFoundError):
        tree.readdir("data/nope")
    with pytest.raises(FileNotFoundError):
        tree.read("nope", 0, 10)
    with pytest.raises(FileNotFoundError):
        tree.lookup("data/../small.txt")


def test_readdir_of_a_file_and_read_of_a_directory_raise(tree: ReadPath) -> None:
    with pytest.raises(NotADirectoryError):
        tree.readdir("small.txt")
    with pytest.raises(IsADirectoryError):
        tree.read("data", 0, 1)


def test_sequential_reads_return_every_byte(tree: ReadPath, files: dict[str, bytes]) -> None:
    want = files["data/big.bin"]
    got = bytearray()
    while chunk := tree.read("data/big.bin", len(got), 128 * 1024 - 1):
        got += chunk
    assert bytes(got) == want


def test_random_ranges_match_including_across_block_edges(tree: ReadPath, files: dict[str, bytes]) -> None:
    want = files["data/big.bin"]
    rng = random.Random(1)
    ranges = [(BLOCK - 3, 10), (0, 1), (len(want) - 5, 100), (len(want), 10), (3 * BLOCK, 2 * BLOCK + 7)]
    ranges += [(rng.randrange(len(want)), rng.randrange(1, 3 * BLOCK)) for _ in range(50)]
    for offset, length in ranges:
        assert tree.read("/data/big.bin", offset, length) == want[offset:offset + length], (offset, length)


def test_small_files_and_empty_files_read_back(tree: ReadPath, files: dict[str, bytes]) -> None:
    assert tree.read("small.txt", 0, 4096) == b"hello\n"
    assert tree.read("small.txt", 2, 2) == b"ll"
    assert tree.read("empty", 0, 4096) == b""


def test_sequential_reader_gets_blocks_fetched_ahead_in_background(tree: ReadPath, store: CountingStore) -> None:
    store.fetched.clear()
    tree.read("data/big.bin", 0, 1000)
    deadline = time.monotonic() + 5
    while len(set(store.fetched)) < 1 + tree.readahead and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(set(store.fetched)) == 1 + tree.readahead
    assert any(name.startswith("keep-readahead") for name in store.threads)


def test_random_reader_fetches_only_the_blocks_it_reads(tree: ReadPath, store: CountingStore) -> None:
    tree.read("data/big.bin", 5 * BLOCK + 10, 10)  # not at 0 and not continuing: random
    tree.read("data/big.bin", 2 * BLOCK + 10, 10)
    time.sleep(0.2)
    assert len(store.fetched) - 1 == 2  # the manifest plus exactly the two blocks read


def test_a_block_read_twice_is_fetched_once(store: CountingStore, files: dict[str, bytes]) -> None:
    with ReadPath(store, write_dataset(store, files), readahead=0) as rp:
        store.fetched.clear()
        for _ in range(5):
            rp.read("data/big.bin", 3 * BLOCK + 1, 100)
    assert len(store.fetched) == 1


def test_a_lost_block_raises_the_stores_error_from_read(store: CountingStore, files: dict[str, bytes]) -> None:
    loc = write_dataset(store, files)
    rp = ReadPath(store, loc, readahead=0)
    seg = rp.manifest.file("data/big.bin").segments[4]
    stored = store.find(seg.locator.md5)
    assert stored is not None
    os.unlink(stored)
    assert rp.read("data/big.bin", 0, 10) == files["data/big.bin"][:10]
    with pytest.raises(BlockNotFound):
        rp.read("data/big.bin", 4 * BLOCK, 10)


def test_normalize_path_strips_slashes_and_dots() -> None:
    assert normalize_path("/a//./b/") == "a/b"
    assert normalize_path("/") == ""


def test_close_stops_read_ahead(tree: ReadPath) -> None:
    tree.read("data/big.bin", 0, 10)
    tree.close()
    assert tree.read("data/big.bin", 10, 10)  # reads still work, without read-ahead
    assert tree._executor is None


@pytest.mark.parametrize("module", ["keepstore.datasets.tree", "keepstore.contrib.fuse", "keepstore.contrib.fsspec",
                                    "keepstore.contrib.ipython", "keepstore.ipython"])
def test_integration_modules_keep_all_sorted_and_resolvable(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert mod.__all__ == sorted(mod.__all__)
    assert all(hasattr(mod, name) for name in mod.__all__)
