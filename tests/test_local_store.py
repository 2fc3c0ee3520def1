"""LocalStore: the store contract, the on-disk layout, damage detection and Arvados interop."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract.store_contract import StoreContract

from keepstore.errors import BlockNotFound, KeepError, LocatorError, ReadError
from keepstore.local import LocalStore
from keepstore.locator import Locator


class TestLocalStoreContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[LocalStore]:
        yield LocalStore(tmp_path / "store")


class TestLocalStoreWithoutFsyncContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[LocalStore]:
        yield LocalStore(tmp_path / "store", fsync=False)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_block_is_written_as_root_md5_prefix_md5(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"foo")
    path = tmp_path / "acb" / "acbd18db4cc2f85cedef654fccc4a4d8"
    assert path.read_bytes() == b"foo"
    assert _files(tmp_path) == [path]
    assert str(loc) == "acbd18db4cc2f85cedef654fccc4a4d8+3"


def test_put_of_the_empty_block_writes_no_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put(b"")
    assert _files(tmp_path) == []


def test_put_over_64_mib_leaves_the_directory_empty(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(LocatorError):
        store.put(bytes(64 * 1024 * 1024 + 1))
    assert list(tmp_path.rglob("*")) == []


def test_flat_layout_of_the_arvados_sdk_is_readable(tmp_path: Path) -> None:
    (tmp_path / "acbd18db4cc2f85cedef654fccc4a4d8").write_bytes(b"foo")
    store = LocalStore(tmp_path)
    assert store.get("acbd18db4cc2f85cedef654fccc4a4d8+3") == b"foo"
    assert store.head("acbd18db4cc2f85cedef654fccc4a4d8+3") is True


@pytest.mark.parametrize("layout", ["layered", "flat"])
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "extended"])
def test_damaged_file_raises_read_error_naming_locator_and_path(tmp_path: Path, layout: str, damage: str) -> None:
    store = LocalStore(tmp_path)
    data = os.urandom(5000)
    loc = Locator.for_data(data)
    path = tmp_path / loc.md5[:3] / loc.md5 if layout == "layered" else tmp_path / loc.md5
    path.parent.mkdir(exist_ok=True)
    if damage == "flipped byte":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0x01]) + data[101:])
    elif damage == "truncated":
        path.write_bytes(data[:-1])
    else:
        path.write_bytes(data + b"\0")
    with pytest.raises(ReadError) as info:
        store.get(loc)
    assert not isinstance(info.value, BlockNotFound)
    assert str(loc) in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.locator == str(loc)


def test_put_repairs_a_damaged_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"repair me")
    path = tmp_path / loc.md5[:3] / loc.md5
    path.write_bytes(b"repair mE")
    with pytest.raises(ReadError):
        store.get(loc)
    assert store.put(b"repair me") == loc
    assert store.get(loc) == b"repair me"


def test_get_with_signature_and_other_hints_reads_the_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"foo")
    hinted = f"{loc}+A{'0' * 40}@7fffffff+K@zzzzz+Zunknown"
    assert store.get(hinted) == b"foo"


def test_index_lists_blocks_of_both_layouts_and_skips_other_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    stored = {store.put(f"block {n}").md5: len(f"block {n}") for n in range(5)}
    flat = hashlib.md5(b"flat").hexdigest()
    (tmp_path / flat).write_bytes(b"flat")
    stored[flat] = 4
    (tmp_path / "notes.txt").write_text("not a block")
    (tmp_path / (flat + ".tmp")).write_bytes(b"arvados temp")
    (tmp_path / "abc").mkdir(exist_ok=True)
    (tmp_path / "abc" / ".tmp-leftover").write_bytes(b"partial")
    listed = {md5: size for md5, size, _mtime in store.index()}
    assert listed == stored
    some = next(iter(stored))
    assert {md5 for md5, _, _ in store.index(some[:2])} == {m for m in stored if m.startswith(some[:2])}
    assert [md5 for md5, _, _ in store.index(some)] == [some]


def test_index_reports_mtime_in_nanoseconds(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"timed")
    [(md5, size, mtime_ns)] = list(store.index())
    assert (md5, size) == (loc.md5, 5)
    assert mtime_ns == (tmp_path / loc.md5[:3] / loc.md5).stat().st_mtime_ns


def test_delete_removes_the_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"gone soon")
    assert store.delete(loc) is True
    assert store.exists(loc) is False
    assert store.delete(loc) is False


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "", "ACBD18DB4CC2F85CEDEF654FCCC4A4D8"])
def test_paths_never_escape_the_root(tmp_path: Path, name: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(LocatorError):
        store.path_for(name)
    with pytest.raises(LocatorError):
        store.find(name)
    with pytest.raises(LocatorError):
        store.writer(name)
    assert not (tmp_path / "etc").exists()


def test_every_valid_locator_maps_inside_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    root = tmp_path.resolve()
    for n in range(50):
        md5 = hashlib.md5(str(n).encode()).hexdigest()
        path = store.path_for(md5).resolve()
        assert path.parent.parent == root and path.name == md5


def test_create_false_on_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(KeepError, match="does not exist"):
        LocalStore(tmp_path / "missing", create=False)


def test_copies_and_storage_classes_are_accepted_and_ignored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"classy", copies=3, storage_classes=["archive"])
    assert store.get(loc) == b"classy"
    assert len(_files(tmp_path)) == 1


def test_head_of_a_wrong_sized_file_raises_read_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"sized")
    (tmp_path / loc.md5[:3] / loc.md5).write_bytes(b"size")
    with pytest.raises(ReadError) as info:
        store.head(loc)
    assert not isinstance(info.value, BlockNotFound)


def test_remove_stale_temp_files_keeps_blocks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"keep me")
    leftover = tmp_path / loc.md5[:3] / ".tmp-killed"
    leftover.write_bytes(b"keep")
    assert store.remove_stale_temp_files(older_than=3600) == 0
    assert leftover.exists()
    assert store.remove_stale_temp_files(older_than=0) == 1
    assert not leftover.exists()
    assert store.get(loc) == b"keep me"


# -- interoperability with the Arvados SDK's local_store ------------------------------------------


def _arvados_client(directory: Path) -> object:
    arvados_keep = pytest.importorskip("arvados.keep")
    return arvados_keep.KeepClient(api_client=None, local_store=str(directory), num_retries=0)


def test_arvados_sdk_local_store_directory_is_readable_by_local_store(tmp_path: Path) -> None:
    arv = _arvados_client(tmp_path)
    blocks = [b"", b"foo", os.urandom(1), os.urandom(100_000)]
    locators = [arv.put(data) for data in blocks]  # type: ignore[attr-defined]
    store = LocalStore(tmp_path)
    for data, text in zip(blocks, locators, strict=True):
        loc = Locator.parse(text)
        assert (loc.md5, loc.size) == (hashlib.md5(data).hexdigest(), len(data))
        assert store.get(text) == data
        assert store.head(text) is True
    # The SDK writes even the empty block as a file, so the index lists it too.
    assert {md5 for md5, _, _ in store.index()} == {Locator.parse(t).md5 for t in locators}


def test_arvados_sdk_reads_blocks_local_store_found_in_its_flat_layout(tmp_path: Path) -> None:
    # LocalStore writes the layered layout, which the SDK's local_store cannot see; what the SDK
    # can read is a flat directory, and LocalStore leaves an SDK-written block where it is.
    arv = _arvados_client(tmp_path)
    text = arv.put(b"shared")  # type: ignore[attr-defined]
    store = LocalStore(tmp_path)
    assert str(store.put(b"shared")) == text
    assert arv.get(text) == b"shared"  # type: ignore[attr-defined]
    assert _files(tmp_path) == [tmp_path / Locator.parse(text).md5]


def test_arvados_sdk_cannot_see_the_layered_layout(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"layered only")
    arv = _arvados_client(tmp_path)
    with pytest.raises(FileNotFoundError):
        arv.get(str(loc))  # type: ignore[attr-defined]


def test_a_damaged_copy_in_one_layout_does_not_hide_a_good_one_in_the_other(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = Locator.for_data(b"two copies")
    (tmp_path / loc.md5).write_bytes(b"two copies")
    (tmp_path / loc.md5[:3]).mkdir()
    (tmp_path / loc.md5[:3] / loc.md5).write_bytes(b"two copiez")
    assert store.get(loc) == b"two copies"


def test_head_and_exists_find_a_good_flat_copy_behind_a_torn_layered_one(tmp_path):
    """Regression: get() fell back to the Arvados flat-layout copy, head()/exists() did not."""
    store = LocalStore(tmp_path, fsync=False)
    data = b"two layouts"
    md5 = hashlib.md5(data).hexdigest()
    (tmp_path / md5[:3]).mkdir()
    (tmp_path / md5[:3] / md5).write_bytes(data[:3])  # torn
    (tmp_path / md5).write_bytes(data)  # what an Arvados SDK local_store wrote
    loc = f"{md5}+{len(data)}"
    assert store.get(loc) == data and store.head(loc) is True and store.exists(loc) is True
