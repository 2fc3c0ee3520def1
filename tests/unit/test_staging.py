"""`StagingTree` without FUSE: POSIX-like changes, copy-on-write over a base, journal recovery, commit."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keepstore import LocalStore
from keepstore.datasets import DatasetReader, DatasetWriter, ReadPath
from keepstore.datasets.staging import StagingError, StagingFullError, StagingTree
from keepstore.errors import WriteError

RW_CREATE = os.O_RDWR | os.O_CREAT


class CountingStore(LocalStore):
    """A LocalStore that counts gets and can be switched to refuse puts (a store gone at commit)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gets = 0
        self.refuse = False

    def get(self, locator: Any, **kwargs: Any) -> bytes:
        self.gets += 1
        return super().get(locator, **kwargs)

    def put(self, data: Any, **kwargs: Any) -> Any:
        if self.refuse:
            raise WriteError("no service accepted the block: connection refused", wanted=1)
        return super().put(data, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "blocks")


@pytest.fixture
def base(store: CountingStore) -> Iterator[ReadPath]:
    with DatasetWriter(store) as writer:
        writer.add_bytes("keep.txt", b"unchanged\n")
        writer.add_bytes("edit.txt", b"0123456789")
        writer.add_bytes("dir/inner.txt", b"inner")
        writer.add_bytes("big.bin", bytes(range(256)) * 4096)
        loc = writer.finish().locator
    with ReadPath(store, loc, mtime=1_700_000_000) as tree:
        yield tree


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[StagingTree]:
    with StagingTree.new(tmp_path / "staging") as tree:
        yield tree


def write_file(tree: StagingTree, path: str, data: bytes) -> None:
    fh = tree.create(path, 0o644, RW_CREATE | os.O_TRUNC)
    try:
        assert tree.write(fh, 0, data) == len(data)
    finally:
        tree.release(fh)


def read_file(tree: StagingTree, path: str) -> bytes:
    fh = tree.open(path)
    try:
        return tree.read(fh, 0, 1 << 30)
    finally:
        tree.release(fh)


def committed_files(store: LocalStore, locator: str) -> dict[str, bytes]:
    with DatasetReader(store, locator) as reader:
        return {f.path: reader.read_bytes(f.path) for f in reader.files()}


def test_new_files_and_directories_commit_as_a_dataset(staging, store) -> None:
    staging.mkdir("out")
    staging.mkdir("out/empty")
    write_file(staging, "out/a.csv", b"x,y\n1,2\n")
    write_file(staging, "top.txt", b"top")
    assert staging.readdir("") == ["out", "top.txt"]
    assert staging.lookup("out/a.csv").size == 8 and not staging.lookup("out/a.csv").is_dir
    receipt = staging.commit(store)
    assert committed_files(store, receipt.locator) == {"out/a.csv": b"x,y\n1,2\n", "top.txt": b"top"}
    with DatasetReader(store, receipt.locator) as reader:
        assert reader.listdir("out") == ["a.csv", "empty"]


@pytest.mark.parametrize(("action", "code"), [
    (lambda t: t.mkdir("d"), errno.EEXIST),
    (lambda t: t.rmdir("d"), errno.ENOTEMPTY),
    (lambda t: t.rmdir("d/f"), errno.ENOTDIR),
    (lambda t: t.rmdir(""), errno.EBUSY),
    (lambda t: t.unlink("d"), errno.EISDIR),
    (lambda t: t.unlink("nope"), errno.ENOENT),
    (lambda t: t.mkdir("d/f/x"), errno.ENOTDIR),
    (lambda t: t.mkdir("no/parent"), errno.ENOENT),
    (lambda t: t.rename("d", "d/sub/moved"), errno.EINVAL),
    (lambda t: t.rename("d/f", "d"), errno.EISDIR),
    (lambda t: t.rename("e", "d/f"), errno.ENOTDIR),
    (lambda t: t.rename("e", "d"), errno.ENOTEMPTY),
    (lambda t: t.rename("nope", "x"), errno.ENOENT),
    (lambda t: t.open("d/f", os.O_CREAT | os.O_EXCL | os.O_WRONLY), errno.EEXIST),
    (lambda t: t.open("d"), errno.EISDIR),
    (lambda t: t.open("nope"), errno.ENOENT),
    (lambda t: t.truncate("d/f", -1), errno.EINVAL),
], ids=["mkdir-exists", "rmdir-nonempty", "rmdir-file", "rmdir-root", "unlink-dir", "unlink-missing",
        "mkdir-under-file", "mkdir-no-parent", "rename-into-itself", "rename-file-over-dir",
        "rename-dir-over-file", "rename-over-nonempty", "rename-missing", "create-excl", "open-dir",
        "open-missing", "truncate-negative"])
def test_changes_fail_with_the_errno_posix_gives(staging, action, code) -> None:
    staging.mkdir("d")
    staging.mkdir("d/sub")
    staging.mkdir("e")
    write_file(staging, "d/f", b"data")
    with pytest.raises(OSError) as exc:
        action(staging)
    assert exc.value.errno == code
    assert staging.readdir("d") == ["f", "sub"] and read_file(staging, "d/f") == b"data"


def test_rename_replaces_a_file_and_open_handles_follow_the_file(staging, store) -> None:
    write_file(staging, "old", b"old")
    fh = staging.create("tmp", 0o644)
    staging.write(fh, 0, b"new")
    staging.rename("tmp", "old")
    staging.write(fh, 3, b"er")  # the handle still writes the renamed file
    staging.release(fh)
    staging.mkdir("a")
    staging.mkdir("b")
    staging.rename("a", "b")  # over an empty directory
    assert staging.readdir("") == ["b", "old"]
    assert committed_files(store, staging.commit(store).locator) == {"old": b"newer"}


def test_an_unlinked_open_file_stays_usable_and_is_not_committed(staging, store) -> None:
    fh = staging.create("scratch", 0o600)
    staging.write(fh, 0, b"temporary")
    staging.unlink("scratch")
    assert staging.readdir("") == []
    staging.write(fh, 9, b"!")
    assert staging.read(fh, 0, 100) == b"temporary!" and staging.fstat(fh).size == 10
    staging.release(fh)
    assert committed_files(store, staging.commit(store).locator) == {}


def test_truncate_cuts_and_zero_extends(staging) -> None:
    write_file(staging, "f", b"abcdef")
    staging.truncate("f", 3)
    assert read_file(staging, "f") == b"abc"
    fh = staging.open("f", os.O_RDWR)
    staging.truncate("", 6, fh)
    staging.release(fh)
    assert read_file(staging, "f") == b"abc\0\0\0"
    staging.write(fh2 := staging.open("f", os.O_WRONLY | os.O_TRUNC), 0, b"z")
    staging.release(fh2)
    assert read_file(staging, "f") == b"z"


def test_mtime_is_settable_and_directories_change_with_their_entries(tmp_path) -> None:
    now = [1_000]
    with StagingTree.new(tmp_path / "s", clock=lambda: now[0]) as tree:
        tree.mkdir("d")
        assert tree.lookup("d").mtime_ns == 1_000
        now[0] = 2_000
        write_file(tree, "d/f", b"x")
        assert tree.lookup("d").mtime_ns == 2_000
        tree.utime("d/f", 123_000_000_000)
        assert tree.lookup("d/f").mtime_ns == 123_000_000_000
        tree.utime("d", 5)
        assert tree.lookup("d").mtime_ns == 5
        tree.chmod("d/f", 0o755)
        assert tree.lookup("d/f").permissions == 0o755


def test_base_files_read_through_until_written_then_copy_on_write(store, base, tmp_path) -> None:
    with StagingTree.new(tmp_path / "s", base=base, clock=lambda: 1_700_000_000 * 10**9) as tree:
        assert tree.readdir("") == ["big.bin", "dir", "edit.txt", "keep.txt"]
        assert read_file(tree, "keep.txt") == b"unchanged\n"
        assert tree.lookup("edit.txt").mtime_ns == 1_700_000_000 * 10**9  # the staging's creation
        assert os.listdir(tmp_path / "s" / "objects") == []  # reading copied nothing
        fh = tree.open("edit.txt", os.O_RDWR)
        tree.write(fh, 2, b"XY")
        tree.release(fh)
        assert read_file(tree, "edit.txt") == b"01XY456789"
        tree.rename("big.bin", "dir/big.bin")  # a rename copies nothing either
        tree.unlink("keep.txt")
        write_file(tree, "new.txt", b"new")
        assert len(os.listdir(tmp_path / "s" / "objects")) == 2
        receipt = tree.commit(store)
    files = committed_files(store, receipt.locator)
    assert files == {"edit.txt": b"01XY456789", "dir/inner.txt": b"inner", "dir/big.bin": bytes(range(256)) * 4096,
                     "new.txt": b"new"}
    assert committed_files(store, str(base.locator))["edit.txt"] == b"0123456789"  # the base is untouched


def test_opening_a_base_file_with_o_trunc_reads_nothing_from_the_store(store, base, tmp_path) -> None:
    with StagingTree.new(tmp_path / "s", base=base) as tree:
        before = store.gets
        fh = tree.open("big.bin", os.O_WRONLY | os.O_TRUNC)
        tree.write(fh, 0, b"small")
        tree.release(fh)
        assert store.gets == before
        assert read_file(tree, "big.bin") == b"small"


def test_removing_a_base_directory_after_its_files(store, base, tmp_path) -> None:
    with StagingTree.new(tmp_path / "s", base=base) as tree:
        with pytest.raises(OSError) as exc:
            tree.rmdir("dir")
        assert exc.value.errno == errno.ENOTEMPTY
        tree.unlink("dir/inner.txt")
        tree.rmdir("dir")
        assert "dir" not in committed_files(store, tree.commit(store).locator)


CRASH = textwrap.dedent("""
    import os, sys
    from keepstore.datasets.staging import StagingTree
    tree = StagingTree.new(sys.argv[1])
    tree.mkdir("out")
    tree.mkdir("gone")
    for i in range(3):
        fh = tree.create(f"out/{i}.txt", 0o644)
        tree.write(fh, 0, f"file {i}\\n".encode())
        tree.release(fh)
    tree.rename("out/0.txt", "out/zero.txt")
    tree.unlink("out/1.txt")
    tree.rmdir("gone")
    fh = tree.create("partial.bin", 0o644)
    tree.write(fh, 0, b"x" * 1000)
    os._exit(9)  # killed mid-write: no close, no commit
""")


def test_a_staging_left_by_a_killed_process_reopens_as_it_was(store, tmp_path) -> None:
    path = tmp_path / "s"
    result = subprocess.run([sys.executable, "-c", CRASH, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    (path / "objects" / "999").write_bytes(b"an object the journal never recorded")
    with open(path / "journal", "ab") as f:
        f.write(b'{"op":"mkdir","path":"torn')  # the record being written when the process died
    with StagingTree.reopen(path) as tree:
        assert tree.readdir("") == ["out", "partial.bin"]
        assert tree.readdir("out") == ["2.txt", "zero.txt"]
        assert read_file(tree, "partial.bin") == b"x" * 1000
        assert not (path / "objects" / "999").exists()
        write_file(tree, "after.txt", b"after")
        receipt = tree.commit(store)
    assert committed_files(store, receipt.locator) == {"out/zero.txt": b"file 0\n", "out/2.txt": b"file 2\n",
                                                       "partial.bin": b"x" * 1000, "after.txt": b"after"}


def test_reopening_over_a_base_replays_copy_ups(store, base, tmp_path) -> None:
    with StagingTree.new(tmp_path / "s", base=base) as tree:
        created = tree.lookup("keep.txt").mtime_ns
        fh = tree.open("edit.txt", os.O_WRONLY)
        tree.write(fh, 0, b"AB")
        tree.release(fh)
        tree.rename("dir", "moved")
    assert StagingTree.read_base(tmp_path / "s") == str(base.locator)
    with pytest.raises(StagingError, match="base"):
        StagingTree.reopen(tmp_path / "s")
    with StagingTree.reopen(tmp_path / "s", base=base, clock=lambda: 5) as tree:
        assert read_file(tree, "edit.txt") == b"AB23456789"
        assert tree.readdir("moved") == ["inner.txt"]
        assert tree.lookup("keep.txt").mtime_ns == created  # base files keep their time across reopens


def test_a_staging_in_use_is_refused(staging) -> None:
    with pytest.raises(StagingError, match="in use by process"):
        StagingTree.reopen(staging.directory)


def test_a_new_staging_must_be_empty(tmp_path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x").write_text("x")
    with pytest.raises(StagingError, match="not empty"):
        StagingTree.new(tmp_path / "s")
    with pytest.raises(StagingError, match="not a staging directory"):
        StagingTree.reopen(tmp_path / "s")


def test_writes_beyond_free_space_fail_with_enospc_and_change_nothing(store, base, tmp_path) -> None:
    free = [10_000]
    with StagingTree.new(tmp_path / "s", base=base, reserve=1_000, free_bytes=lambda _p: free[0]) as tree:
        fh = tree.create("f", 0o644)
        assert tree.write(fh, 0, b"a" * 8_000) == 8_000
        free[0] -= 8_000
        with pytest.raises(StagingFullError) as exc:
            tree.write(fh, 8_000, b"b" * 2_000)
        assert exc.value.errno == errno.ENOSPC
        assert "is full" in str(exc.value) and "--staging" in str(exc.value)
        assert tree.write(fh, 0, b"c" * 100) == 100  # overwriting needs no more room
        tree.release(fh)
        assert tree.lookup("f").size == 8_000
        with pytest.raises(StagingFullError):
            tree.open("big.bin", os.O_RDWR)  # a copy-up of 1 MiB does not fit either
        assert tree.lookup("big.bin").size == 256 * 4096


def test_a_commit_the_store_refuses_keeps_the_staging_and_can_be_retried(store, base, tmp_path) -> None:
    with StagingTree.new(tmp_path / "s", base=base) as tree:
        write_file(tree, "result.txt", b"result")
        store.refuse = True
        with pytest.raises(WriteError, match="connection refused"):
            tree.commit(store)
        assert not tree.clean
        store.refuse = False
        receipt = tree.commit(store)
        assert tree.clean
        write_file(tree, "more.txt", b"more")
        assert not tree.clean
    assert committed_files(store, receipt.locator)["result.txt"] == b"result"


def test_fsync_and_statfs(staging) -> None:
    fh = staging.create("f", 0o644)
    staging.write(fh, 0, b"durable")
    staging.fsync(fh)
    staging.fsync(fh, datasync=True)
    staging.release(fh)
    st = staging.statfs()
    assert st["f_bavail"] > 0 and st["f_namemax"] == 255


def test_discard_removes_the_staging_directory(tmp_path) -> None:
    tree = StagingTree.new(tmp_path / "s")
    write_file(tree, "f", b"x")
    tree.discard()
    assert not (tmp_path / "s").exists()


def test_unchanged_base_files_are_committed_by_reference_without_reading_them(store, base, tmp_path) -> None:
    with StagingTree.new(tmp_path / "s", base=base) as tree:
        write_file(tree, "added.txt", b"added")
        tree.rename("big.bin", "renamed.bin")
        before = store.gets
        receipt = tree.commit(store)
        assert store.gets == before  # no base block was read to commit
    with DatasetReader(store, receipt.locator) as new, DatasetReader(store, str(base.locator)) as old:
        assert list(new.stat("renamed.bin").segments) == list(old.stat("big.bin").segments)
        assert list(new.stat("keep.txt").segments) == list(old.stat("keep.txt").segments)
        assert new.read_bytes("added.txt") == b"added"
