"""``keep mount --exec`` (run a command, unmount, its exit status), ``--by-id`` and mount point checks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import fuse_missing, keep, keep_env, keep_put, mounted, stop, unmount, wait_for

from keepstore import LocalStore
from keepstore.datasets import DatasetWriter
from keepstore.datasets.byid import ByIdTree
from keepstore.locator import Locator

_MISSING = fuse_missing()
requires_fuse = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return keep_env(tmp_path)


@pytest.fixture
def dataset(env: dict[str, str], tmp_path: Path) -> str:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello.txt").write_text("hello\n")
    (src / "sub" / "n.txt").write_text("".join(f"{i}\n" for i in range(100)))
    return keep_put(env, src)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    unmount(path)


# -- ByIdTree without FUSE ----------------------------------------------------------------------


class CountingStore(LocalStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gets: list[str] = []

    def get(self, locator, **kwargs):  # type: ignore[no-untyped-def]
        self.gets.append(str(locator))
        return super().get(locator, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "blocks")


def put_dataset(store: LocalStore, files: dict[str, bytes]) -> str:
    with DatasetWriter(store) as writer:
        for path, data in files.items():
            writer.add_bytes(path, data)
        return writer.finish().locator


def test_by_id_resolves_a_locator_and_a_path_inside_it(store) -> None:
    loc = put_dataset(store, {"a/b.txt": b"bee", "c.txt": b"sea"})
    with ByIdTree(store) as tree:
        assert tree.readdir("") == []
        assert tree.lookup(f"/{loc}").is_dir
        assert tree.readdir(f"{loc}/a") == ["b.txt"]
        assert tree.lookup(f"{loc}/a/b.txt").size == 3
        assert tree.read(f"/{loc}/c.txt", 1, 10) == b"ea"
        assert tree.readdir("/") == [loc]


@pytest.mark.parametrize("name", ["not-a-locator", "0" * 32 + "+3", "abc+x+y"])
def test_by_id_bad_or_unknown_names_are_file_not_found(store, name) -> None:
    with ByIdTree(store) as tree:
        with pytest.raises(FileNotFoundError):
            tree.lookup(f"{name}/x")
        assert tree.readdir("") == []
        assert "0 datasets opened" in repr(tree)


def test_by_id_a_block_that_is_not_a_manifest_is_file_not_found(store) -> None:
    loc = store.put(b"plain data, not a manifest")
    with ByIdTree(store) as tree, pytest.raises(FileNotFoundError):
        tree.lookup(str(loc))


def test_by_id_opens_each_dataset_once_for_concurrent_lookups(store) -> None:
    loc = put_dataset(store, {"f": b"x" * 10})
    manifest_block = Locator.parse(loc).md5
    with ByIdTree(store) as tree:
        barrier = threading.Barrier(8)

        def look() -> None:
            barrier.wait()
            tree.lookup(f"{loc}/f")

        threads = [threading.Thread(target=look) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(manifest_block in g for g in store.gets) == 1


def test_by_id_datasets_share_one_block_cache(store) -> None:
    data = bytes(range(256)) * 64
    first, second = put_dataset(store, {"f": data}), put_dataset(store, {"renamed": data})
    with ByIdTree(store) as tree:
        assert tree.read(f"{first}/f", 0, len(data)) == data
        assert tree.read(f"{second}/renamed", 0, len(data)) == data
    block = Locator.for_data(data).md5
    assert sum(block in g for g in store.gets) == 1  # the second dataset's read was a cache hit


# -- mount point checks ---------------------------------------------------------------------------


def test_a_non_empty_mountpoint_is_refused(env, dataset, mnt) -> None:
    (mnt / "existing.txt").write_text("keep me")
    result = keep(env, "mount", dataset, str(mnt))
    assert result.returncode == 1
    assert result.stderr.startswith("keep: error: ") and "is not empty" in result.stderr
    assert "existing.txt" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.ismount(mnt)
    assert (mnt / "existing.txt").read_text() == "keep me"


def test_by_id_takes_only_a_mountpoint(env, dataset, mnt) -> None:
    result = keep(env, "mount", "--by-id", dataset, str(mnt))
    assert result.returncode == 2 and "--by-id takes only MOUNTPOINT" in result.stderr


# -- --exec -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 3])
@pytest.mark.fuse
@requires_fuse
def test_exec_runs_the_command_and_exits_with_its_status(env, dataset, mnt, status) -> None:
    result = keep(env, "mount", dataset, str(mnt), "--exec", "sh", "-c",
                  f'cat "$KEEP_MOUNT/hello.txt"; wc -l < {mnt}/sub/n.txt; exit {status}')
    assert result.returncode == status, result.stderr
    assert result.stdout.split() == ["hello", "100"]
    assert not os.path.ismount(mnt)
    assert list(mnt.iterdir()) == []


@pytest.mark.fuse
@requires_fuse
def test_exec_of_a_command_killed_by_a_signal_exits_128_plus_the_signal(env, dataset, mnt) -> None:
    result = keep(env, "mount", dataset, str(mnt), "--exec", "sh", "-c", "kill -9 $$")
    assert result.returncode == 128 + signal.SIGKILL
    assert not os.path.ismount(mnt)


@pytest.mark.fuse
@requires_fuse
def test_exec_runs_the_command_with_default_signal_dispositions(env, dataset, mnt) -> None:
    result = keep(env, "mount", dataset, str(mnt), "--exec", "sh", "-c", "yes | head -n 2")
    assert result.returncode == 0
    assert result.stdout == "y\ny\n"
    assert "Broken pipe" not in result.stderr  # SIGPIPE ended yes, as in a shell


@pytest.mark.fuse
@requires_fuse
def test_exec_of_a_missing_command_exits_127_and_unmounts(env, dataset, mnt) -> None:
    result = keep(env, "mount", dataset, str(mnt), "--exec", "no-such-command-here", "arg")
    assert result.returncode == 127
    assert "cannot run no-such-command-here" in result.stderr
    assert not os.path.ismount(mnt)


WAITER = """
import signal, sys
def done(sig, frame):
    print("got", sig, flush=True)
    sys.exit(40 + sig)
signal.signal(signal.SIGTERM, done)
signal.signal(signal.SIGINT, done)
print(open(sys.argv[1]).read().strip(), flush=True)
signal.pause()
"""


@pytest.mark.fuse
@requires_fuse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_exec_passes_the_signal_on_and_unmounts(env, dataset, mnt, tmp_path, sig) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    proc = subprocess.Popen([sys.executable, "-m", "keepstore", "mount", dataset, str(mnt), "--exec",
                             sys.executable, str(script), str(mnt / "hello.txt")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "hello"  # the command is running, with the mount up
        assert os.path.ismount(mnt)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 40 + sig
        assert proc.stdout.read().split() == ["got", str(int(sig))]  # received once, not twice
    finally:
        stop(proc, signal.SIGKILL)
    assert not os.path.ismount(mnt)


@pytest.mark.fuse
@requires_fuse
def test_the_mount_goes_away_when_the_exec_parent_is_killed(env, dataset, mnt, tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "keepstore", "mount", dataset, str(mnt), "--exec",
                             "sh", "-c", "echo up; exec sleep 600"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        proc.kill()
        proc.wait(timeout=30)
        wait_for(lambda: not os.path.ismount(mnt), "the orphaned mount stopping")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_exec_needs_a_command(env, dataset, mnt) -> None:
    result = keep(env, "mount", dataset, str(mnt), "--exec")
    assert result.returncode == 2 and "--exec needs a command" in result.stderr


# -- --by-id through FUSE -------------------------------------------------------------------------


@pytest.mark.fuse
@requires_fuse
def test_by_id_mount_resolves_locators_on_lookup_and_lists_what_was_opened(env, dataset, tmp_path) -> None:
    other = tmp_path / "other.txt"
    other.write_text("other\n")
    second = keep_put(env, other)
    mnt = tmp_path / "byid"
    with mounted(env, mnt, "--by-id") as proc:
        assert os.listdir(mnt) == []
        assert (mnt / dataset / "hello.txt").read_text() == "hello\n"
        assert sorted(os.listdir(mnt / dataset)) == ["hello.txt", "sub"]
        assert (mnt / second / "other.txt").read_text() == "other\n"
        assert sorted(os.listdir(mnt)) == sorted([dataset, second])
        for bad in ("not-a-locator", "0" * 32 + "+10", f"{dataset}/missing.txt"):
            with pytest.raises(FileNotFoundError) as missing:
                os.stat(mnt / bad)
            assert missing.value.errno == errno.ENOENT
        with pytest.raises(OSError) as refused:
            (mnt / dataset / "new.txt").write_text("x")
        assert refused.value.errno in (errno.EROFS, errno.EACCES)
        assert proc.poll() is None  # bad names did not crash the mount
        assert sorted(os.listdir(mnt)) == sorted([dataset, second])
