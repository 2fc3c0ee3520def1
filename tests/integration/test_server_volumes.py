"""keep serve over hostile volumes: unreadable directories, impostor entries, dead writers, power cuts."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keepstore.local import StrPath
from keepstore.server import KeepServer, Volume
from keepstore.server.disk import FileOps
from keepstore.testing import wait_until

SYSTEM = "sys-token"


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _serve(*args: str, as_unprivileged: bool = False, stderr=None) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0", "--no-fsync", *args]
    if as_unprivileged and os.geteuid() == 0:  # root reads anything: drop the capabilities that allow it
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr or subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"listening on http://127\.0\.0\.1:([0-9]+)/", line)
    assert match, line
    return proc, int(match.group(1))


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root needs setpriv")
def test_an_unreadable_directory_on_one_volume_does_not_hide_the_good_copy_on_another(tmp_path: Path) -> None:
    data = b"whole on the second volume"
    md5 = hashlib.md5(data).hexdigest()
    v0, v1 = tmp_path / "v0", tmp_path / "v1"
    for v in (v0, v1):
        (v / md5[:3]).mkdir(parents=True)
        (v / md5[:3] / md5).write_bytes(data)
    (v0 / md5[:3]).chmod(0)
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc, port = _serve("--volume", str(v0), "--volume", str(v1), as_unprivileged=True, stderr=err)
        try:
            assert _request(port, "GET", f"/{md5}+{len(data)}") == (200, data)
            assert _request(port, "HEAD", f"/{md5}+{len(data)}")[0] == 200
        finally:
            proc.terminate()
            proc.wait(20)
            (v0 / md5[:3]).chmod(0o755)
    text = log.read_text()
    assert "Traceback" not in text and "cannot look up block" in text


def test_a_directory_under_a_block_name_is_not_listed_in_the_index(tmp_path: Path) -> None:
    impostor = "0" * 32
    (tmp_path / "v" / "000" / impostor).mkdir(parents=True)
    (tmp_path / "v" / ("1" * 32)).mkdir()  # the flat layout too
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False) as server:
        assert _request(server.port, "PUT", "/" + hashlib.md5(b"real").hexdigest(), b"real")[0] == 200
        status, body = _request(server.port, "GET", "/index", headers={"Authorization": f"Bearer {SYSTEM}"})
    assert status == 200
    assert body.decode().splitlines()[:-1] == [
        line for line in body.decode().splitlines()[:-1] if line.startswith(hashlib.md5(b"real").hexdigest())]
    assert impostor not in body.decode() and "1" * 32 not in body.decode()


def test_stale_temp_cleanup_does_not_follow_a_symlinked_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ".tmp-precious"
    victim.write_bytes(b"not the volume's")
    old = time.time() - 7200
    os.utime(victim, (old, old))
    volume = tmp_path / "v"
    volume.mkdir()
    (volume / "ddd").symlink_to(outside, target_is_directory=True)
    (volume / "eee").mkdir()
    stale = volume / "eee" / ".tmp-left-behind"
    stale.write_bytes(b"x")
    os.utime(stale, (old, old))
    KeepServer([volume], fsync=False)
    assert victim.exists() and not stale.exists()


def test_temp_files_of_dead_writers_are_reclaimed_at_once_and_a_live_writers_is_kept(tmp_path: Path) -> None:
    volume = Volume(tmp_path / "v", fsync=False)
    md5 = hashlib.md5(b"in flight").hexdigest()
    live = volume.writer(md5)  # holds its lock, as a writer in this or another process does
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    dead = live.temp.parent / f".tmp-keep-{dead_pid}-0123456789abcdef"
    dead.write_bytes(b"left by kill -9")
    young_foreign = live.temp.parent / ".tmp-localstore-writer"  # a LocalStore's: no lock, not old
    young_foreign.write_bytes(b"maybe live")
    old = time.time() - 7200
    os.utime(live.temp, (old, old))  # age alone must not condemn a live writer's file
    assert volume.reclaim() == 1
    assert not dead.exists() and live.temp.exists() and young_foreign.exists()
    live.write(b"in flight")
    assert str(live.commit()) == f"{md5}+9"


def test_a_put_killed_mid_body_leaves_no_temp_file_after_a_restart(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    data = os.urandom(1 << 20)
    md5 = hashlib.md5(data).hexdigest()
    proc, port = _serve("--volume", str(volume))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(f"PUT /{md5} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                     + data[: len(data) // 2])
        temps = volume / md5[:3]
        wait_until(lambda: temps.is_dir() and list(temps.glob(".tmp-*")), 20, what="the server's writer beginning")
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
    finally:
        sock.close()
    assert list(temps.glob(".tmp-*"))  # what kill -9 leaves behind
    proc, port = _serve("--volume", str(volume))
    try:
        assert not list(temps.glob(".tmp-*"))  # reclaimed at start, not an hour later
        assert _request(port, "PUT", f"/{md5}", data)[0] == 200
    finally:
        proc.terminate()
        proc.wait(20)


class _Recording(FileOps):
    """The real calls, recorded: enough to replay what a power cut would keep."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.names: dict[int, str] = {}

    def mkdir(self, path: StrPath) -> bool:
        created = super().mkdir(path)
        if created:
            self.log.append(("mkdir", str(path)))
        return created

    def create(self, path: StrPath) -> int:
        fd = super().create(path)
        self.names[fd] = str(path)
        self.log.append(("create", str(path)))
        return fd

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        super().write(fd, data)
        self.log.append(("write", self.names[fd]))

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self.log.append(("fsync", self.names[fd]))

    def replace(self, src: StrPath, dst: StrPath) -> None:
        super().replace(src, dst)
        self.log.append(("replace", f"{src}>{dst}"))

    def fsync_dir(self, path: StrPath) -> None:
        super().fsync_dir(path)
        self.log.append(("fsync_dir", str(path)))


def _survives_a_power_cut(log: list[tuple[str, str]], final: Path) -> bool:
    """Replay *log* as a file system that keeps only what was synced: is *final* there, whole?"""
    durable_entries: set[str] = set()
    pending_entries: dict[str, set[str]] = {}  # directory -> entries made since its last fsync
    synced_data: set[str] = set()
    dirty: set[str] = set()
    renamed: dict[str, str] = {}  # final name -> the temp file whose data it has
    for op, arg in log:
        if op == "mkdir":
            pending_entries.setdefault(str(Path(arg).parent), set()).add(arg)
        elif op == "write":
            dirty.add(arg)
            synced_data.discard(arg)
        elif op == "fsync":
            dirty.discard(arg)
            synced_data.add(arg)
        elif op == "replace":
            src, dst = arg.split(">")
            renamed[dst] = src
            pending_entries.setdefault(str(Path(dst).parent), set()).add(dst)
        elif op == "fsync_dir":
            durable_entries |= pending_entries.pop(arg, set())
    return (str(final.parent) in durable_entries and str(final) in durable_entries
            and renamed.get(str(final)) in synced_data)


def test_a_put_is_acknowledged_only_once_it_would_survive_a_power_cut(tmp_path: Path) -> None:
    ops = _Recording()
    root = tmp_path / "v"
    root.mkdir()
    volume = Volume(root, fsync=True, ops=ops)
    data = b"durable before the 200"
    md5 = hashlib.md5(data).hexdigest()
    with KeepServer([volume]) as server:
        assert _request(server.port, "PUT", f"/{md5}", data)[0] == 200
        log = list(ops.log)  # everything done before the client saw its 200
    final = root / md5[:3] / md5
    assert _survives_a_power_cut(log, final)
    kinds = [op for op, _ in log]
    assert kinds == ["mkdir", "fsync_dir", "create", "write", "fsync", "replace", "fsync_dir"]
    assert log[1] == ("fsync_dir", str(root)) and log[-1] == ("fsync_dir", str(final.parent))
    assert not _survives_a_power_cut(log[:-1], final)  # the model notices a missing step


def test_no_fsync_means_no_fsync_calls(tmp_path: Path) -> None:
    ops = _Recording()
    volume = Volume(tmp_path / "v", fsync=False, ops=ops)
    with KeepServer([volume]) as server:
        assert _request(server.port, "PUT", "/" + hashlib.md5(b"fast").hexdigest(), b"fast")[0] == 200
    assert not [op for op, _ in ops.log if op.startswith("fsync")]
