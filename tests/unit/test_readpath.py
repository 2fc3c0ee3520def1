"""ReadPath: a dataset as lookup/getattr/readdir/read, over a real LocalStore (no FUSE)."""

from __future__ import annotations

import os
import random
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from keepstore import LocalStore, Locator
from keepstore.cache import MemoryBlockCache
from keepstore.datasets import BlockSource, DatasetReader, DatasetWriter
from keepstore.datasets.tree import ReadPath, normalize_path
from keepstore.errors import BlockNotFound, ConfigError
from keepstore.locator import LocatorLike

BLOCK = 64 * 1024  # small blocks so files span many of them


class CountingStore(LocalStore):
    """A real LocalStore that records which blocks were fetched, and by which thread.

    With ``meet`` set, each fetch waits (up to 10 s) until two fetches are in flight at once,
    so a test of parallel fetching does not depend on how the scheduler happened to run them.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.fetched: list[str] = []
        self.threads: set[str] = set()
        self.meet = False
        self.in_flight = 0
        self.most_in_flight = 0
        self._count_lock = threading.Condition()

    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        with self._count_lock:
            self.fetched.append(Locator.parse(str(locator)).md5)
            self.threads.add(threading.current_thread().name)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._count_lock.notify_all()
            if self.meet and not self._count_lock.wait_for(lambda: self.most_in_flight >= 2, timeout=10):
                self.meet = False  # nobody came: the rest need not wait too
        try:
            return super().get(locator, request_id=request_id)
        finally:
            with self._count_lock:
                self.in_flight -= 1


def write_dataset(store: LocalStore, files: dict[str, bytes], dirs: Iterable[str] = ()) -> str:
    with DatasetWriter(store, block_size=BLOCK) as writer:
        for path, data in files.items():
            writer.add_bytes(path, data)
        for d in dirs:
            writer.add_directory(d)
        return writer.finish().locator


def blocks_of(tree: ReadPath, path: str, ranges: Iterable[tuple[int, int]]) -> list[str]:
    """The md5s of the distinct blocks holding *ranges* of *path*, sorted."""
    file = tree.manifest.file(path)
    return sorted({seg.locator.md5 for offset, length in ranges for _i, _at, seg in file.segments_in(offset, length)})


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
    assert tree.blocks.wait_idle(timeout=30)
    assert len(set(store.fetched)) == 1 + tree.readahead
    assert any(name.startswith("keep-read") for name in store.threads)  # the BlockSource's pool


def test_read_ahead_goes_through_the_readers_block_source(tree: ReadPath, store: CountingStore) -> None:
    assert tree.blocks is tree.reader.blocks and tree.cache is tree.reader.cache
    tree.read("data/big.bin", 0, 10)
    assert tree.blocks.wait_idle(timeout=30)
    second = tree.manifest.file("data/big.bin").segments[1].locator
    assert tree.reader.cache.get(second) is not None  # fetched ahead into the reader's cache
    store.fetched.clear()
    with tree.reader.open("data/big.bin") as f:
        f.seek(BLOCK + 5)
        assert f.read(3)
    assert second.md5 not in store.fetched  # the reader's own file read finds it there


def test_random_reader_fetches_only_the_blocks_it_reads(tree: ReadPath, store: CountingStore) -> None:
    tree.read("data/big.bin", 5 * BLOCK + 10, 10)  # not at 0 and not continuing: random
    tree.read("data/big.bin", 2 * BLOCK + 10, 10)
    assert tree.blocks.wait_idle(timeout=30)
    assert len(store.fetched) - 1 == 2  # the manifest plus exactly the two blocks read


def test_read_without_read_ahead_when_told_it_is_not_sequential(tree: ReadPath, store: CountingStore) -> None:
    store.fetched.clear()
    tree.read("data/big.bin", 0, 10, sequential=False)
    tree.read("data/big.bin", 10, 10, sequential=False)
    assert tree.blocks.wait_idle(timeout=30)
    assert len(store.fetched) == 1


def test_a_read_over_many_blocks_fetches_them_in_parallel(tree: ReadPath, store: CountingStore,
                                                          files: dict[str, bytes]) -> None:
    store.fetched.clear()
    store.threads.clear()
    store.meet = True  # a serial reader leaves the first fetch waiting out its 10 s alone
    assert tree.read("data/big.bin", 0, 6 * BLOCK, sequential=False) == files["data/big.bin"][:6 * BLOCK]
    assert sorted(store.fetched) == blocks_of(tree, "data/big.bin", [(0, 6 * BLOCK)])
    assert store.most_in_flight >= 2
    assert len({name for name in store.threads if name.startswith("keep-read")}) > 1


def test_read_ranges_fetches_each_block_once(tree: ReadPath, store: CountingStore, files: dict[str, bytes]) -> None:
    want = files["data/big.bin"]
    ranges = [(3 * BLOCK + 1, 10), (3 * BLOCK + 500, 20), (BLOCK - 5, 10), (3 * BLOCK + 9, 1), (0, 0)]
    store.fetched.clear()
    got = tree.read_ranges([("data/big.bin", offset, length) for offset, length in ranges])
    assert got == [want[offset:offset + length] for offset, length in ranges]
    fetched = len(store.fetched)
    assert sorted(store.fetched) == blocks_of(tree, "data/big.bin", ranges) and fetched < 4  # each block once
    assert tree.blocks.wait_idle(timeout=30) and len(store.fetched) == fetched  # and nothing read ahead


def test_read_ranges_gives_each_range_its_own_error(tree: ReadPath, files: dict[str, bytes]) -> None:
    got = tree.read_ranges([("small.txt", 1, 3), ("nope", 0, 1), ("data", 0, 1), ("small.txt", -1, 1)])
    assert got[0] == b"ell"
    assert isinstance(got[1], FileNotFoundError) and isinstance(got[2], IsADirectoryError)
    assert isinstance(got[3], ValueError)


def test_read_ranges_reports_a_lost_block_only_for_the_ranges_in_it(store: CountingStore,
                                                                    files: dict[str, bytes]) -> None:
    with ReadPath(store, write_dataset(store, files), readahead=0) as rp:
        lost = rp.manifest.file("data/big.bin").segments[2].locator
        stored = store.find(lost.md5)
        assert stored is not None
        os.unlink(stored)
        got = rp.read_ranges([("data/big.bin", 0, 5), ("data/big.bin", 2 * BLOCK, 5), ("small.txt", 0, 2)])
    assert got[0] == files["data/big.bin"][:5] and got[2] == b"he"
    assert isinstance(got[1], BlockNotFound)


def test_trees_can_share_one_block_source(store: CountingStore, files: dict[str, bytes]) -> None:
    loc = write_dataset(store, files)
    shared = BlockSource(store)
    one, two = ReadPath(store, loc, blocks=shared, readahead=0), ReadPath(store, loc, blocks=shared, readahead=0)
    store.fetched.clear()
    assert one.read("data/big.bin", 7 * BLOCK, 9) == two.read("data/big.bin", 7 * BLOCK, 9)
    assert len(store.fetched) == 1
    one.close()
    assert not shared.closed  # not the tree's to close
    shared.close()


def test_conflicting_block_options_are_refused(store: CountingStore, files: dict[str, bytes]) -> None:
    loc = write_dataset(store, files)
    with pytest.raises(ConfigError):
        ReadPath(store, loc, blocks=BlockSource(store), cache=MemoryBlockCache(1 << 20))
    with pytest.raises(ConfigError):
        ReadPath(store, DatasetReader(store, loc), cache=MemoryBlockCache(1 << 20))
    with pytest.raises(ConfigError):
        ReadPath(store, loc, readahead=-1)


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


def test_close_stops_read_ahead(tree: ReadPath, store: CountingStore, files: dict[str, bytes]) -> None:
    tree.read("data/big.bin", 0, 10)
    tree.close()
    assert tree.blocks.closed
    store.fetched.clear()
    store.threads.clear()
    assert tree.read("data/big.bin", 4 * BLOCK, 2 * BLOCK) == files["data/big.bin"][4 * BLOCK:6 * BLOCK]
    assert tree.read("data/big.bin", 6 * BLOCK, 10)  # continues: sequential, but no read-ahead now
    assert len(store.fetched) == 3 and store.threads == {threading.current_thread().name}


@pytest.mark.parametrize("module", ["keepstore.datasets.tree", "keepstore.contrib.fuse", "keepstore.contrib.fsspec",
                                    "keepstore.contrib.ipython", "keepstore.ipython"])
def test_integration_modules_keep_all_sorted_and_resolvable(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions
    assert mod.__all__ == sorted(mod.__all__, key=lambda name: (not name.isupper(), not name[:1].isupper(), name))
    assert all(hasattr(mod, name) for name in mod.__all__)
