"""``keep mount`` for real through FUSE: a subprocess serving a dataset, read back byte for byte."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import fuse_missing

from keepstore.cache import DiskBlockCache
from keepstore.datasets import open_dataset
from keepstore.testing import KeepCluster

_MISSING = fuse_missing()
pytestmark = [pytest.mark.fuse, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

MOUNT_WAIT = 30.0


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    base.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
                XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"),
                KEEP_LOCAL_STORE=str(tmp_path / "store"), FUSE_LIBRARY_NAME="fuse3")
    return base


def keep(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def keep_put(env: dict[str, str], path: Path) -> str:
    result = keep(env, "put", "--no-progress", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def unmount(mountpoint: Path) -> None:
    """Lazy-unmount whatever is left at *mountpoint* (teardown of a failed test)."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)


@contextlib.contextmanager
def mounted(env: dict[str, str], locator: str, mountpoint: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """``keep mount --foreground`` as a subprocess; always stopped and unmounted afterwards."""
    mountpoint.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "keepstore", "mount", locator, str(mountpoint), "--foreground",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                pytest.fail(f"keep mount exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail(f"{mountpoint} not mounted within {MOUNT_WAIT} s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        unmount(mountpoint)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A tree with a > 64 MiB file, small files, an empty file and nested directories."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    rng = random.Random(64)
    (src / "big.bin").write_bytes(os.urandom(64 * 2**20 + 3 * 2**20 + 12345))
    (src / "a" / "notes.txt").write_text("hello, mount\n")
    (src / "a" / "b" / "table.csv").write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(5000)))
    (src / "a" / "b" / "empty").write_bytes(b"")
    for i in range(20):
        (src / "a" / f"small-{i:02}.dat").write_bytes(rng.randbytes(rng.randrange(1, 50_000)))
    return src


def all_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_every_file_of_a_keep_put_dataset_reads_back_byte_identical(env, source, tmp_path) -> None:
    loc = keep_put(env, source)
    mnt = tmp_path / "mnt"
    with mounted(env, loc, mnt):
        assert all_files(mnt) == all_files(source)
        assert sorted(p.name for p in mnt.iterdir()) == ["a", "big.bin", "empty-dir"]
        for rel in all_files(source):
            assert (mnt / rel).stat().st_size == (source / rel).stat().st_size, rel
            assert sha256(mnt / rel) == sha256(source / rel), rel


def test_a_file_over_64_mib_reads_at_random_offsets(env, source, tmp_path) -> None:
    loc = keep_put(env, source)
    want = (source / "big.bin").read_bytes()
    rng = random.Random(5)
    boundary = 64 * 2**20
    offsets = [(0, 4096), (boundary - 100, 200), (len(want) - 10, 4096), (boundary, 1 << 20)]
    offsets += [(rng.randrange(len(want)), rng.randrange(1, 2 << 20)) for _ in range(60)]
    with mounted(env, loc, tmp_path / "mnt"):
        fd = os.open(tmp_path / "mnt" / "big.bin", os.O_RDONLY)
        try:
            for offset, length in offsets:
                assert os.pread(fd, length, offset) == want[offset:offset + length], (offset, length)
        finally:
            os.close(fd)


def test_the_mount_is_read_only(env, source, tmp_path) -> None:
    loc = keep_put(env, source / "a" / "notes.txt")
    mnt = tmp_path / "mnt"
    with mounted(env, loc, mnt):
        with pytest.raises(OSError) as exc:
            (mnt / "notes.txt").write_text("changed")
        assert exc.value.errno == errno.EROFS
        with pytest.raises(OSError):
            (mnt / "new").write_bytes(b"x")
        with pytest.raises(FileNotFoundError):
            (mnt / "missing").read_bytes()
        assert (mnt / "notes.txt").read_text() == "hello, mount\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_unmounts_cleanly_and_exits_zero(env, source, tmp_path, sig) -> None:
    loc = keep_put(env, source / "a" / "notes.txt")
    mnt = tmp_path / "mnt"
    with mounted(env, loc, mnt) as proc:
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
        assert not os.path.ismount(mnt)


def test_background_mount_returns_once_mounted_and_stops_on_unmount(env, source, tmp_path) -> None:
    loc = keep_put(env, source / "a" / "notes.txt")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        result = keep(env, "mount", loc, str(mnt), timeout=60)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)
        assert (mnt / "notes.txt").read_text() == "hello, mount\n"
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        assert not os.path.ismount(mnt)
    finally:
        unmount(mnt)


def test_an_unknown_dataset_fails_before_mounting(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = keep(env, "mount", "0" * 32 + "+10", str(mnt), "--foreground", timeout=60)
    assert result.returncode == 3
    assert result.stderr.startswith("keep: error:") and "Traceback" not in result.stderr
    assert not os.path.ismount(mnt)


def test_a_missing_mountpoint_is_a_clear_error(env, tmp_path) -> None:
    result = keep(env, "mount", "0" * 32 + "+10", str(tmp_path / "nowhere"), timeout=60)
    assert result.returncode == 1
    assert "nowhere: No such file or directory" in result.stderr


@pytest.fixture
def cluster_env(env: dict[str, str], keep_cluster: KeepCluster) -> dict[str, str]:
    env = dict(env)
    del env["KEEP_LOCAL_STORE"]
    env.update(keep_cluster.env())
    return env


def test_mount_over_a_keep_serve_cluster_reads_back_and_fills_the_disk_cache(
        cluster_env, keep_cluster, source, tmp_path) -> None:
    loc = keep_put(cluster_env, source / "a")
    mnt = tmp_path / "mnt"
    with mounted(cluster_env, loc, mnt):
        for rel in all_files(source / "a"):
            assert (mnt / rel).read_bytes() == (source / "a" / rel).read_bytes(), rel
    with keep_cluster.client() as kc:
        manifest = open_dataset(kc, loc).manifest
    blocks = {seg.locator.bare() for f in manifest.files.values() for seg in f.segments}
    cache = DiskBlockCache(tmp_path / "cache" / "keepstore" / "blocks")
    try:
        assert blocks and all(cache.get(b) is not None for b in blocks), "every block read is in the disk cache"
    finally:
        cache.close()


@pytest.mark.wall_clock  # "promptly" is the behaviour: a read must fail, not hang on a lost store
def test_reads_fail_with_eio_promptly_when_services_are_gone(cluster_env, keep_cluster, source, tmp_path) -> None:
    loc = keep_put(cluster_env, source / "a")
    mnt = tmp_path / "mnt"
    with mounted(cluster_env, loc, mnt, "--no-disk-cache", "--memory-cache", "0") as proc:
        assert (mnt / "notes.txt").read_text() == "hello, mount\n"
        for server in keep_cluster.servers:
            server.stop()
        started = time.monotonic()
        with pytest.raises(OSError) as exc:
            (mnt / "b" / "table.csv").read_bytes()
        elapsed = time.monotonic() - started
        assert exc.value.errno == errno.EIO
        assert elapsed < 10, f"EIO took {elapsed:.1f} s"
        assert (mnt / "notes.txt").stat().st_size == len("hello, mount\n")  # metadata still served
        for server in keep_cluster.servers:
            server.start()
        assert (mnt / "b" / "table.csv").read_bytes() == (source / "a" / "b" / "table.csv").read_bytes()
        assert proc.poll() is None


def test_the_docs_example_script_runs(env, tmp_path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "mount.md").read_text()
    script = text.split("```sh\n", 1)[1].split("```", 1)[0]
    work = tmp_path / "work"
    work.mkdir()
    env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        unmount(work / "mnt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hello", "1000"]


def test_reading_every_file_of_a_multi_file_block_gets_each_block_once(cluster_env, keep_cluster, source,
                                                                       tmp_path) -> None:
    loc = keep_put(cluster_env, source / "a")  # 20 small files, notes and a table: all in one block
    with keep_cluster.client() as kc:
        manifest = open_dataset(kc, loc).manifest
    segments = {seg.locator.md5: seg.locator for f in manifest.files.values() for seg in f.segments if seg.length}
    blocks = set(segments)
    assert len(blocks) == 1 and len(manifest.files) > 20
    # The mount is given one server holding the manifest and the block: with two, a busy machine's
    # slow first byte would rightly be hedged (an extra GET); test_hedged_reads tests hedging.
    (holder, *_) = set(keep_cluster.holders(loc)).intersection(*(keep_cluster.holders(b) for b in segments.values()))
    env = dict(cluster_env, KEEP_SERVICES=keep_cluster.servers[holder].url)
    for server in keep_cluster.servers:
        server.requests.clear()
    mnt = tmp_path / "mnt"
    with mounted(env, loc, mnt, "--no-disk-cache"):  # only the mount's own memory cache
        for rel in all_files(source / "a"):
            assert (mnt / rel).read_bytes() == (source / "a" / rel).read_bytes(), rel
    gets = [r.path for s in keep_cluster.servers for r in s.requests if r.method == "GET" and r.status == 200]
    for md5 in blocks:
        assert sum(md5 in path for path in gets) == 1, gets
