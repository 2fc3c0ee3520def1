"""LocalStore: the store contract, the on-disk layout, damage detection and Arvados interop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract.store_contract import StoreContract

from keepstore.errors import BlockNotFound, KeepError, LocatorError, ReadError
from keepstore.local import TEMP_PREFIX, FileSystem, LocalStore, StrPath
from keepstore.locator import Locator
from keepstore.locator import md5 as fips_md5


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
    flat = fips_md5(b"flat").hexdigest()
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
        md5 = fips_md5(str(n).encode()).hexdigest()
        path = store.path_for(md5).resolve()
        assert path.parent.parent == root and path.name == md5


def test_create_false_on_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(KeepError, match="does not exist"):
        LocalStore(tmp_path / "missing", create=False)


def test_copies_and_storage_classes_are_accepted_and_ignored(tmp_path: Path) -> None:
    from keepstore.local import ReplicationWarning

    store = LocalStore(tmp_path)
    with pytest.warns(ReplicationWarning):
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
        assert (loc.md5, loc.size) == (fips_md5(data).hexdigest(), len(data))
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
    md5 = fips_md5(data).hexdigest()
    (tmp_path / md5[:3]).mkdir()
    (tmp_path / md5[:3] / md5).write_bytes(data[:3])  # torn
    (tmp_path / md5).write_bytes(data)  # what an Arvados SDK local_store wrote
    loc = f"{md5}+{len(data)}"
    assert store.get(loc) == data and store.head(loc) is True and store.exists(loc) is True


# -- issue 15 items 7 and 9: odd directories, temp reclaim, fsync order ------------------------


def test_a_directory_under_a_block_name_is_not_a_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    loc = Locator.for_data(b"not here")
    (tmp_path / loc.md5[:3] / loc.md5).mkdir(parents=True)
    (tmp_path / loc.md5).mkdir()  # the flat layout too
    assert store.find(loc.md5) is None
    assert list(store.index()) == []
    with pytest.raises(BlockNotFound):
        store.head(loc)
    with pytest.raises(BlockNotFound):
        store.get(loc)


def test_an_unreadable_directory_is_a_keepstore_error_not_a_permission_error(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    loc = store.put(b"locked away")
    sub = tmp_path / loc.md5[:3]
    if os.geteuid() != 0:  # a real unreadable directory where permissions bind
        sub.chmod(0)
    else:  # root reads everything: make the kernel's EACCES answer for this directory
        real_stat, real_scandir = Path.stat, os.scandir

        def denied(path: object) -> bool:
            return str(path).startswith(str(sub))

        def stat(self: Path, **kw: object) -> os.stat_result:
            if denied(self):
                raise PermissionError(13, "Permission denied", str(self))
            return real_stat(self, **kw)  # type: ignore[arg-type]

        def scandir(path: object = ".") -> object:
            if denied(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)  # type: ignore[call-overload]

        monkeypatch.setattr(Path, "stat", stat)
        monkeypatch.setattr(os, "scandir", scandir)
    try:
        for call in (lambda: store.get(loc), lambda: store.head(loc), lambda: list(store.index())):
            with pytest.raises(ReadError) as info:
                call()
            assert not isinstance(info.value, BlockNotFound) and "Permission denied" in str(info.value)
            assert isinstance(info.value, KeepError)
    finally:
        sub.chmod(0o755)


def test_reclaim_removes_only_old_unlocked_temp_files_and_never_follows_symlinks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    loc = store.put(b"a block beside the temps")
    sub = tmp_path / "store" / loc.md5[:3]
    stale = sub / f"{TEMP_PREFIX}stale"
    stale.write_bytes(b"left by a killed writer")
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / f"{TEMP_PREFIX}not-ours"
    victim.write_bytes(b"outside the volume")
    (tmp_path / "store" / "fff").symlink_to(outside)
    (sub / f"{TEMP_PREFIX}link").symlink_to(victim)
    now = os.stat(stale).st_mtime
    with store.writer(Locator.for_data(b"live").md5) as live:
        live.write(b"li")
        assert store.reclaim(older_than=10, now=now) == 0  # nothing old enough yet
        assert store.reclaim(older_than=10, now=now + 3600) == 1  # the stale one; the live writer's is locked
        assert live.temp.exists()
    assert not stale.exists() and victim.exists() and (sub / f"{TEMP_PREFIX}link").is_symlink()
    assert store.get(loc) == b"a block beside the temps"


class RecordingFileSystem(FileSystem):
    """Records the durability calls, in order, with paths relative to the store root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []
        self.fds: dict[int, str] = {}

    def _rel(self, path: object) -> str:
        return str(Path(str(path)).relative_to(self.root)) if str(path) != str(self.root) else "."

    def mkdir(self, path: StrPath) -> bool:
        made = super().mkdir(path)
        if made:
            self.calls.append(("mkdir", self._rel(path)))
        return made

    def mkstemp(self, directory: StrPath, prefix: str) -> tuple[int, str]:
        fd, name = super().mkstemp(directory, prefix)
        self.fds[fd] = self._rel(name)
        return fd, name

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", self.fds[fd]))
        super().fsync(fd)

    def replace(self, source: StrPath, target: StrPath) -> None:
        self.calls.append(("replace", f"{self._rel(source)} -> {self._rel(target)}"))
        super().replace(source, target)

    def fsync_dir(self, path: StrPath) -> None:
        self.calls.append(("fsync_dir", self._rel(path)))
        super().fsync_dir(path)


def test_a_block_is_made_durable_file_then_rename_then_directory(tmp_path: Path) -> None:
    """Issue 15 item 9: fsync the data, rename, fsync the directory (and a new directory's parent)."""
    fs = RecordingFileSystem(tmp_path)
    store = LocalStore(tmp_path, fs=fs)
    first = store.put(b"durable one")
    sub = first.md5[:3]
    temp = next(name for name in fs.fds.values())
    assert fs.calls == [("mkdir", sub), ("fsync_dir", "."), ("fsync", temp),
                        ("replace", f"{temp} -> {sub}/{first.md5}"), ("fsync_dir", sub)]
    # A second block in the same directory: no mkdir, so no fsync of the root.
    data = next(d for d in (b"x%d" % n for n in range(5000)) if Locator.for_data(d).md5[:3] == sub)
    fs.calls.clear()
    store.put(data)
    assert [name for name, _ in fs.calls] == ["fsync", "replace", "fsync_dir"]


class PowerCutFileSystem(RecordingFileSystem):
    """At a power cut, loses whatever was not synced: a renamed name whose directory was never
    fsynced disappears, as on a real crash before the directory's journal entry is written."""

    def durable_names(self) -> set[str]:
        durable: set[str] = set()
        pending: dict[str, set[str]] = {}
        for call, arg in self.calls:
            if call == "replace":
                target = arg.split(" -> ")[1]
                pending.setdefault(str(Path(target).parent), set()).add(target)
            elif call == "fsync_dir":
                durable |= pending.pop(arg, set())
        return durable


def test_with_fsync_every_acknowledged_block_survives_a_power_cut(tmp_path: Path) -> None:
    fs = PowerCutFileSystem(tmp_path)
    store = LocalStore(tmp_path, fs=fs)
    locs = [store.put(b"block %d" % n) for n in range(20)]
    assert {f"{loc.md5[:3]}/{loc.md5}" for loc in locs} <= fs.durable_names()
    unsynced = PowerCutFileSystem(tmp_path / "nosync")
    loc = LocalStore(tmp_path / "nosync", fs=unsynced, fsync=False).put(b"fast, not durable")
    assert f"{loc.md5[:3]}/{loc.md5}" not in unsynced.durable_names()  # the double does catch a missing sync


def test_opening_with_reclaim_after_removes_old_unlocked_temps(tmp_path: Path) -> None:
    loc = LocalStore(tmp_path).put(b"kept")
    stale = tmp_path / loc.md5[:3] / f"{TEMP_PREFIX}killed"
    stale.write_bytes(b"partial")
    day_ago = os.stat(stale).st_mtime - 86400
    os.utime(stale, (day_ago, day_ago))  # written a day before the store's own clock
    fresh = tmp_path / loc.md5[:3] / f"{TEMP_PREFIX}fresh"
    fresh.write_bytes(b"maybe a writer between create and lock")
    store = LocalStore(tmp_path, reclaim_after=3600)
    assert not stale.exists() and fresh.exists() and store.get(loc) == b"kept"
    LocalStore(tmp_path)  # without reclaim_after, opening removes nothing
    assert fresh.exists()


def test_get_holds_a_buffer_of_the_blocks_size_not_of_the_largest_block(tmp_path) -> None:
    import tracemalloc

    store = LocalStore(tmp_path / "store")
    loc = store.put(b"x" * 4096)
    tracemalloc.start()
    try:
        assert store.get(loc) == b"x" * 4096
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024  # it was 64 MiB + 1 for every get


def test_a_longer_file_than_its_locator_says_is_reported_with_its_real_size(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    loc = store.put(b"abc")
    path = next(p for p in (tmp_path / "store").rglob(loc.md5) if p.is_file())
    path.write_bytes(b"abcdef")
    with pytest.raises(ReadError, match="6 bytes, want 3"):
        store.get(loc)


def test_a_local_store_warns_once_that_it_cannot_keep_more_copies_or_classes(tmp_path) -> None:
    from keepstore.local import ReplicationWarning

    store = LocalStore(tmp_path / "store")
    with pytest.warns(ReplicationWarning, match="copies=5") as seen:
        store.put(b"one", copies=5)
        store.put(b"two", copies=5, storage_classes=["hot"])
    assert len([w for w in seen if issubclass(w.category, ReplicationWarning)]) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LocalStore(tmp_path / "other").put(b"three", copies=1)  # one copy wanted: nothing to say


def test_keep_put_on_the_default_local_store_says_copies_are_not_applied(tmp_path) -> None:
    import subprocess
    import sys

    src = tmp_path / "f.txt"
    src.write_text("data")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    out = subprocess.run([sys.executable, "-m", "keepstore", "put", "--copies", "5", "--no-progress", str(src)],
                         capture_output=True, text=True, env=env, check=True)
    assert "keeps one copy" in out.stderr and "copies=5" in out.stderr
