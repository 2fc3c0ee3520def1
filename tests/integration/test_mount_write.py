"""``keep mount --write`` for real through FUSE: write with shell tools and Python, commit, read back."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mounting import fuse_missing, keep, keep_env, keep_put, mounted, stop, unmount, wait_for

from keepstore.testing import KeepCluster

_MISSING = fuse_missing()
pytestmark = [pytest.mark.fuse, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return keep_env(tmp_path)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under *root* (empty directories as "dir")."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not any(path.iterdir()):
            out[rel] = "dir"
    return out


def keep_get(env: dict[str, str], locator: str, dest: Path) -> Path:
    result = keep(env, "get", "--no-progress", locator, str(dest))
    assert result.returncode == 0, result.stderr
    return dest


def unmount_and_commit(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the foreground mount: it unmounts, commits, prints the locator and exits 0."""
    assert stop(proc) == 0, proc.stderr.read() if proc.stderr else ""
    assert proc.stdout is not None
    return proc.stdout.read().strip()


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    src = tmp_path / "sample"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "nested" / "a.txt").write_text("alpha\n")
    (src / "nested" / "deeper" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "top.txt").write_text("top\n")
    return src


def test_files_written_with_shell_tools_and_python_commit_and_read_back(env, sample, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    staging = tmp_path / "staging"
    expected = tmp_path / "expected"
    script = f"""
        set -e
        for root in "$1" "$2"; do
            cp -r {sample} "$root/copied"
            dd if={sample}/nested/deeper/b.bin of="$root/dd.bin" bs=64k status=none
            tar -cf {tmp_path}/t-$$.tar -C {sample} . && mkdir "$root/untarred" && tar -xf {tmp_path}/t-$$.tar -C "$root/untarred"
            printf 'one\\n' > "$root/log.txt"; printf 'two\\n' >> "$root/log.txt"
            mkdir -p "$root/empty/dir" "$root/gone"; rmdir "$root/gone"
            echo temp > "$root/tmp.txt"; mv "$root/tmp.txt" "$root/renamed.txt"
            echo x > "$root/deleted.txt"; rm "$root/deleted.txt"
            truncate -s 10 "$root/dd.bin"
        done
    """
    expected.mkdir()
    with mounted(env, mnt, "--write", "--staging", str(staging)) as proc:
        subprocess.run(["bash", "-c", script, "sh", str(mnt), str(expected)], check=True, timeout=120)
        for root in (mnt, expected):
            with open(root / "py.dat", "wb") as f:
                f.write(b"head")
                f.seek(1000)
                f.write(b"tail")
                f.flush()
                os.fsync(f.fileno())
            with open(root / "py.dat", "r+b") as f:
                f.seek(2)
                f.write(b"XX")
            (root / "saved.tmp").write_text("replacement\n")  # save by temp file and rename over
            os.replace(root / "saved.tmp", root / "log.txt")
        assert tree_digest(mnt) == tree_digest(expected)
        untarred = sample / "nested" / "a.txt", mnt / "untarred" / "nested" / "a.txt"
        assert int(untarred[1].stat().st_mtime) == int(untarred[0].stat().st_mtime)  # tar -x set it
        assert (mnt / "dd.bin").stat().st_size == 10
        locator = unmount_and_commit(proc)
    assert not staging.exists()  # committed, so removed
    assert tree_digest(keep_get(env, locator, tmp_path / "got")) == tree_digest(expected)


def test_a_background_mount_commits_when_unmounted_and_writes_the_locator_file(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    locator_file = tmp_path / "out.loc"
    result = keep(env, "mount", "--write", str(mnt), "--locator-file", str(locator_file))
    assert result.returncode == 0, result.stderr
    try:
        (mnt / "bg.txt").write_text("background\n")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
    wait_for(locator_file.exists, "the locator file being written")
    assert keep(env, "cat", f"{locator_file.read_text().strip()}/bg.txt").stdout == "background\n"


def test_parallel_writers_through_the_mount(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    data = {f"w{i}.bin": os.urandom(3 << 20) for i in range(6)}

    def write(name: str) -> None:
        with open(mnt / name, "wb") as f:
            for start in range(0, len(data[name]), 100_000):
                f.write(data[name][start:start + 100_000])

    with mounted(env, mnt, "--write") as proc:
        threads = [threading.Thread(target=write, args=(name,)) for name in data]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        locator = unmount_and_commit(proc)
    got = keep_get(env, locator, tmp_path / "got")
    assert {p.name: p.read_bytes() for p in got.iterdir()} == data


def test_pandas_to_csv_through_the_mount(env, tmp_path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"x": range(1000), "y": [i * 0.5 for i in range(1000)]})
    mnt = tmp_path / "mnt"
    with mounted(env, mnt, "--write") as proc:
        frame.to_csv(mnt / "frame.csv", index=False)
        assert pd.read_csv(mnt / "frame.csv").equals(frame)
        locator = unmount_and_commit(proc)
    got = keep_get(env, f"{locator}/frame.csv", tmp_path / "frame.csv")
    assert pd.read_csv(got).equals(frame)


def test_copy_on_write_over_a_base_dataset(env, sample, tmp_path) -> None:
    base = keep_put(env, sample)
    mnt = tmp_path / "mnt"
    with mounted(env, mnt, "--write", "--base", base) as proc:
        assert (mnt / "top.txt").read_text() == "top\n"
        assert sorted(os.listdir(mnt / "nested")) == ["a.txt", "deeper"]
        with open(mnt / "nested" / "a.txt", "a") as f:
            f.write("beta\n")
        os.rename(mnt / "nested" / "deeper", mnt / "moved")
        os.unlink(mnt / "top.txt")
        (mnt / "new.txt").write_text("new\n")
        os.utime(mnt / "new.txt", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
        assert (mnt / "new.txt").stat().st_mtime_ns == 1_600_000_000 * 10**9
        locator = unmount_and_commit(proc)
    got = keep_get(env, locator, tmp_path / "got")
    assert (got / "nested" / "a.txt").read_text() == "alpha\nbeta\n"
    assert (got / "moved" / "b.bin").read_bytes() == (sample / "nested" / "deeper" / "b.bin").read_bytes()
    assert sorted(os.listdir(got)) == ["moved", "nested", "new.txt"]
    assert tree_digest(keep_get(env, base, tmp_path / "base")) == tree_digest(sample)  # the base is untouched


def test_commit_while_mounted_prints_the_locator_and_the_mount_goes_on(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    locator_file = tmp_path / "locator.txt"
    with mounted(env, mnt, "--write", "--locator-file", str(locator_file)) as proc:
        (mnt / "first.txt").write_text("first\n")
        result = keep(env, "mount", "--commit", str(mnt))
        assert result.returncode == 0, result.stderr
        first = result.stdout.strip()
        assert locator_file.read_text().strip() == first
        assert (mnt / ".keep#commit").read_text().strip() == first
        assert os.listdir(mnt) == ["first.txt"]  # the control file is not listed
        (mnt / "second.txt").write_text("second\n")
        final = unmount_and_commit(proc).splitlines()
    assert final[0] == first and len(final) == 2
    assert locator_file.read_text().strip() == final[1]
    assert keep(env, "cat", f"{first}/first.txt").stdout == "first\n"
    assert keep(env, "ls", first).stdout.split() == ["first.txt"]
    assert keep(env, "ls", final[1]).stdout.split() == ["first.txt", "second.txt"]


def test_commit_of_a_directory_that_is_not_a_write_mount_is_a_clear_error(env, tmp_path) -> None:
    result = keep(env, "mount", "--commit", str(tmp_path))
    assert result.returncode == 1
    assert "is not a keep mount --write mount" in result.stderr and "Traceback" not in result.stderr


WRITER = """
import os, sys
root = sys.argv[1]
for i in range(5):
    with open(os.path.join(root, f"done-{i}.txt"), "w") as f:
        f.write(f"complete {i}\\n")
with open(os.path.join(root, "growing.bin"), "wb", buffering=0) as f:
    print("ready", flush=True)
    block = bytes(range(256)) * 256
    try:
        while True:
            f.write(block)
    except OSError:
        pass  # the mount went away under us
"""


def test_a_killed_mount_leaves_staging_that_a_later_commit_recovers(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    staging = tmp_path / "staging"
    writer_script = tmp_path / "writer.py"
    writer_script.write_text(WRITER)
    with mounted(env, mnt, "--write", "--staging", str(staging)) as proc:
        writer = subprocess.Popen([sys.executable, str(writer_script), str(mnt)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        wait_for(lambda: (mnt / "growing.bin").stat().st_size > 4 << 20, "4 MiB written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        writer.wait(timeout=60)
        unmount(mnt)  # the kernel's side of the dead mount
    result = keep(env, "mount", "--commit", "--staging", str(staging))
    assert result.returncode == 0, result.stderr
    locator = result.stdout.strip()
    got = keep_get(env, locator, tmp_path / "got")
    assert sorted(os.listdir(got)) == ["done-0.txt", "done-1.txt", "done-2.txt", "done-3.txt", "done-4.txt",
                                       "growing.bin"]
    assert all((got / f"done-{i}.txt").read_text() == f"complete {i}\n" for i in range(5))
    grown = (got / "growing.bin").read_bytes()
    assert len(grown) >= 4 << 20 and grown == (bytes(range(256)) * (len(grown) // 256 + 1))[:len(grown)]
    assert not staging.exists()


def test_a_killed_mount_can_be_remounted_from_its_staging(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    staging = tmp_path / "staging"
    with mounted(env, mnt, "--write", "--staging", str(staging)) as proc:
        (mnt / "kept.txt").write_text("kept\n")
        (mnt / "sub").mkdir()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        unmount(mnt)
    with mounted(env, mnt, "--write", "--staging", str(staging)) as proc:
        assert (mnt / "kept.txt").read_text() == "kept\n" and (mnt / "sub").is_dir()
        (mnt / "sub" / "more.txt").write_text("more\n")
        locator = unmount_and_commit(proc)
    assert keep(env, "ls", locator).stdout.split() == ["kept.txt", "sub/more.txt"]


def test_writes_past_the_staging_reserve_fail_with_enospc(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(env, mnt, "--write", "--staging-reserve", str(1 << 40)) as proc:
        with pytest.raises(OSError) as exc, open(mnt / "big.bin", "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
        assert exc.value.errno == errno.ENOSPC
        stop(proc)
        assert proc.stderr is not None and "is full" in proc.stderr.read()


@pytest.fixture
def cluster_env(env: dict[str, str], keep_cluster: KeepCluster) -> dict[str, str]:
    env = dict(env)
    del env["KEEP_LOCAL_STORE"]
    env.update(keep_cluster.env())
    return env


def test_an_unreachable_store_at_commit_keeps_the_staging_and_a_rerun_finishes(cluster_env, keep_cluster,
                                                                              tmp_path) -> None:
    mnt = tmp_path / "mnt"
    staging = tmp_path / "staging"
    with mounted(cluster_env, mnt, "--write", "--staging", str(staging), "--retries", "0",
                 "--connect-timeout", "1") as proc:
        (mnt / "result.csv").write_text("a,b\n1,2\n")
        for server in keep_cluster.servers:
            server.stop()
        assert stop(proc) == 1
        assert proc.stderr is not None
        errors = [line for line in proc.stderr.read().splitlines() if line.startswith("keep: error:")]
    assert len(errors) == 1 and f"keep mount --commit --staging {staging}" in errors[0], errors
    assert (staging / "staging.json").exists()
    for server in keep_cluster.servers:
        server.start()
    result = keep(cluster_env, "mount", "--commit", "--staging", str(staging), "--locator-file",
                  str(tmp_path / "loc"))
    assert result.returncode == 0, result.stderr
    locator = result.stdout.strip()
    assert (tmp_path / "loc").read_text().strip() == locator
    assert keep(cluster_env, "cat", f"{locator}/result.csv").stdout == "a,b\n1,2\n"
    assert not staging.exists()


def test_exec_with_write_commits_when_the_command_succeeds(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = keep(env, "mount", "--write", str(mnt), "--locator-file", str(tmp_path / "loc"), "--exec",
                  "sh", "-c", 'seq 1 10 > "$KEEP_MOUNT/out.txt"')
    assert result.returncode == 0, result.stderr
    locator = result.stdout.strip()
    assert (tmp_path / "loc").read_text().strip() == locator
    assert keep(env, "cat", f"{locator}/out.txt").stdout == "".join(f"{i}\n" for i in range(1, 11))
    assert not os.path.ismount(mnt)


def test_exec_with_write_does_not_commit_when_the_command_fails(env, tmp_path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    staging = tmp_path / "staging"
    result = keep(env, "mount", "--write", "--staging", str(staging), str(mnt), "--exec",
                  "sh", "-c", 'echo partial > "$KEEP_MOUNT/out.txt"; exit 7')
    assert result.returncode == 7
    assert result.stdout == "" and "not committed" in result.stderr
    assert (staging / "staging.json").exists()
    assert not os.path.ismount(mnt)
    result = keep(env, "mount", "--commit", "--staging", str(staging))  # the outputs can still be kept
    assert result.returncode == 0, result.stderr
    assert keep(env, "cat", f"{result.stdout.strip()}/out.txt").stdout == "partial\n"


def test_the_docs_examples_run_and_print_what_the_docs_show(env, tmp_path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "mount.md").read_text()
    blocks = re.findall(r"```(sh|text)\n(.*?)```", text, re.S)
    assert blocks[0][0] == "sh"  # the read-only example (tests/test_mount.py checks its output): makes demo/
    examples = [(blocks[i][1], blocks[i + 1][1]) for i in range(1, len(blocks)) if blocks[i][0] == "sh"]
    assert all(blocks[i + 1][0] == "text" for i in range(1, len(blocks)) if blocks[i][0] == "sh")
    assert len(examples) == 4
    work = tmp_path / "work"
    work.mkdir()
    try:
        for script, expected in [(blocks[0][1], None), *examples]:
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                    capture_output=True, text=True, timeout=180)
            assert result.returncode == 0, (script, result.stderr)
            if expected is not None:
                assert result.stdout == expected, script
    finally:
        for name in ("mnt", "ids", "out", "stage"):
            unmount(work / name)
