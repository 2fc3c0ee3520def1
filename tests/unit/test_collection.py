"""Datasets on a LocalStore: writing trees, receipts, reading files back, seeking."""

from __future__ import annotations

import io
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepstore import KeepError, LocalStore, Locator
from keepstore.datasets import DatasetReader, DatasetWriter, Receipt
from keepstore.datasets.manifest import Manifest


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store", fsync=False)


def make_tree(root):
    (root / "sub dir" / "ünï" / "empty dir").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "zero").write_bytes(b"")
    (root / "sub dir" / "big.bin").write_bytes(os.urandom(300_000))
    (root / "sub dir" / "ünï" / "small").write_bytes(b"x" * 10)
    return root


def tree_contents(root):
    out: dict[str, bytes | None] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = None
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.join(rel, name)] = f.read()
    return out


def test_tree_round_trip_keeps_empty_files_empty_dirs_spaces_and_non_ascii(store, tmp_path):
    src = make_tree(tmp_path / "src")
    with DatasetWriter(store, block_size=64 * 1024) as w:
        w.add_tree(src)
        receipt = w.finish()
    reader = DatasetReader(store, receipt.locator)
    reader.extract(tmp_path / "out")
    assert tree_contents(tmp_path / "out") == tree_contents(src)
    assert receipt.files == 4
    assert receipt.bytes == 6 + 300_000 + 10


def test_dataset_locator_is_the_manifest_block(store, tmp_path):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"data")
        receipt = w.finish()
    manifest = Manifest.parse(store.get(receipt.locator))
    assert list(manifest.files) == ["f"]
    assert manifest.portable_data_hash() == receipt.portable_data_hash


def test_small_files_are_packed_into_one_block(store):
    with DatasetWriter(store) as w:
        for i in range(50):
            w.add_bytes(f"f{i}", b"%d" % i)
        receipt = w.finish()
    assert len(receipt.blocks) == 1


def test_large_file_is_split_at_block_size(store):
    data = os.urandom(250_000)
    with DatasetWriter(store, block_size=100_000) as w:
        w.add_bytes("big", data)
        receipt = w.finish()
    assert [b.size for b in receipt.blocks] == [100_000, 100_000, 50_000]
    assert DatasetReader(store, receipt.locator).read_bytes("big") == data


def test_receipt_json_round_trip_and_min_replicas(store):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"data")
        receipt = w.finish()
    again = Receipt.from_json(receipt.to_json())
    assert again == receipt
    assert receipt.min_replicas == 1


def test_duplicate_path_is_rejected(store):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"1")
        with pytest.raises(ValueError, match="already"):
            w.add_bytes("f", b"2")


@pytest.mark.parametrize("bad", ["", "..", "a/../b", "/"])
def test_invalid_dataset_paths_are_rejected(store, bad):
    with DatasetWriter(store) as w, pytest.raises(ValueError, match="invalid dataset path"):
        w.add_bytes(bad, b"1")


def test_no_more_than_max_in_flight_uploads(tmp_path):
    class CountingStore(LocalStore):
        """A real LocalStore that records how many puts overlap."""

        def __init__(self, root):
            super().__init__(root, fsync=False)
            self.lock = threading.Lock()
            self.active = self.peak = 0

        def put(self, data, **kw):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            try:
                threading.Event().wait(0.02)  # a slow store (the behaviour under test), so puts overlap
                return super().put(data, **kw)
            finally:
                with self.lock:
                    self.active -= 1

    store = CountingStore(tmp_path / "s")
    with DatasetWriter(store, block_size=1000, max_in_flight=2) as w:
        w.add_bytes("f", os.urandom(20_000))
        w.finish()
    assert 1 <= store.peak <= 2


def test_reading_a_block_that_is_not_a_manifest_is_a_clear_error(store):
    loc = store.put(b"\x00\x01 not a manifest")
    with pytest.raises(ValueError, match="not a dataset manifest"):
        DatasetReader(store, loc)


def test_missing_file_raises_file_not_found(store):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"1")
        receipt = w.finish()
    with pytest.raises(FileNotFoundError):
        DatasetReader(store, receipt.locator).open("g")


_DATA = os.urandom(5000)


@pytest.fixture(scope="module")
def seek_dataset(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("seek"), fsync=False)
    with DatasetWriter(store, block_size=777) as w:  # many block boundaries
        w.add_bytes("pad", b"p" * 100)  # so the file starts mid-block
        w.add_bytes("f", _DATA)
        receipt = w.finish()
    return DatasetReader(store, receipt.locator)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(-6000, 6000), st.sampled_from([0, 1, 2]), st.integers(-1, 3000)),
                    max_size=8))
def test_seek_and_read_match_a_bytesio_of_the_original(seek_dataset, ops):
    ours = seek_dataset.open("f")
    ref = io.BytesIO(_DATA)
    for offset, whence, size in ops:
        # Like a real file (not BytesIO, which clamps): a negative result is an error.
        target = (offset, ref.tell() + offset, len(_DATA) + offset)[whence]
        if target < 0:
            with pytest.raises(OSError):
                ours.seek(offset, whence)
            continue
        expected_pos = ref.seek(target)
        assert ours.seek(offset, whence) == expected_pos
        assert ours.read(size) == ref.read(size)
        assert ours.tell() == ref.tell()


def test_readinto_across_blocks(seek_dataset):
    f = seek_dataset.open("f")
    f.seek(700)
    buf = bytearray(1000)
    assert f.readinto(buf) == 1000
    assert bytes(buf) == _DATA[700:1700]


def test_file_is_read_only(seek_dataset):
    with pytest.raises(ValueError, match="read-only"):
        seek_dataset.open("f", "wb")


def test_locator_of_receipt_parses(store):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"1")
        assert Locator.parse(w.finish().locator).size > 0


def test_a_stream_with_only_read_is_accepted(store):
    class OnlyRead(io.RawIOBase):  # inherits a readinto that raises NotImplementedError
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    data = os.urandom(10_000)
    with DatasetWriter(store, block_size=4096) as w:
        assert w.add_stream("f", OnlyRead(data)) == len(data)  # type: ignore[arg-type]  # read() only, on purpose
        receipt = w.finish()
    assert DatasetReader(store, receipt.locator).read_bytes("f") == data


def test_after_an_add_fails_part_way_the_writer_gives_no_receipt(store):
    class Breaks(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, view) -> int:
            self.calls += 1
            if self.calls > 2:
                raise OSError(5, "Input/output error")
            view[:100] = b"x" * 100
            return 100

    w = DatasetWriter(store)
    w.add_bytes("fine", b"fine")
    with pytest.raises(OSError, match="Input/output"):
        w.add_stream("broken", Breaks())  # type: ignore[arg-type]  # a raw stream, on purpose
    with pytest.raises(KeepError, match="failed add"):
        w.finish()  # a receipt now would name a 200-byte "broken" that was longer
    with pytest.raises(KeepError, match="failed add"):
        w.add_bytes("more", b"more")
    w.abort()


def test_a_small_dataset_does_not_make_a_whole_block_resident(store):
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    with DatasetWriter(store) as w:  # 64 MiB blocks
        before = rss()
        w.add_bytes("tiny", b"abc")
        grown = rss() - before
        receipt = w.finish()
    assert grown < 16 << 20, f"RSS grew by {grown >> 20} MiB for a 3-byte file"
    assert DatasetReader(store, receipt.locator).read_bytes("tiny") == b"abc"


def test_extract_keeps_files_whose_names_look_like_temp_files_and_long_names(store, tmp_path):
    """Regression: extract wrote each file to ".<name>.keep-partial", so a dataset holding both
    ".x.keep-partial" and "x" lost one, and names over 241 bytes failed (ENAMETOOLONG)."""
    long_name = "n" * 250
    with DatasetWriter(store) as w:
        w.add_bytes(".x.keep-partial", b"first")
        w.add_bytes("x", b"second")
        w.add_bytes(long_name, b"long")
        receipt = w.finish()
    out = tmp_path / "out"
    DatasetReader(store, receipt.locator).extract(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([".x.keep-partial", "x", long_name])
    assert (out / ".x.keep-partial").read_bytes() == b"first" and (out / "x").read_bytes() == b"second"
    assert (out / long_name).read_bytes() == b"long"


def test_extracted_files_get_the_usual_mode(store, tmp_path):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"data")
        receipt = w.finish()
    old = os.umask(0o022)
    try:
        DatasetReader(store, receipt.locator).extract(tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "f").stat().st_mode & 0o777 == 0o644


def test_a_closed_keep_file_refuses_reads_and_seeks(store):
    with DatasetWriter(store) as w:
        w.add_bytes("f", b"hello")
        receipt = w.finish()
    f = DatasetReader(store, receipt.locator).open("f")
    f.close()
    for call in (f.read, f.readall, lambda: f.seek(0), f.tell):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_duplicate_and_invalid_paths_are_dataset_errors(store):
    from keepstore.datasets import DatasetError

    with DatasetWriter(store) as w:
        w.add_bytes("a", b"1")
        with pytest.raises(DatasetError, match="already in the dataset"):
            w.add_bytes("a", b"2")
        with pytest.raises(DatasetError, match="invalid dataset path"):
            w.add_bytes("..", b"3")
        w.abort()
