"""keep serve --workers: several processes on one port, each answering, background jobs in the first only."""

from __future__ import annotations

import hashlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from keepstore.server import KeepServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def _documented_command(volume: Path) -> list[str]:
    """The ``keep serve --workers`` example of docs/server.md, on a free port and *volume*."""
    line = next(x.strip() for x in DOCS.read_text().splitlines() if x.strip().startswith("keep serve")
                and "--workers" in x)
    words = shlex.split(line)[2:]
    words[words.index("--listen") + 1] = "127.0.0.1:0"
    words[words.index("--volume") + 1] = str(volume)
    return [sys.executable, "-m", "keepstore", "serve", *words, "--no-fsync"]


@pytest.fixture
def workers(tmp_path: Path):
    volume = tmp_path / "v"
    volume.mkdir()
    command = _documented_command(volume)
    assert command[command.index("--workers") + 1] == "2"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), proc.stderr.read() if proc.stderr else line
    port = int(line.strip().rstrip("/").rsplit(":", 1)[1])
    try:
        yield proc, port, volume
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _sockets(pid: int, port: int, status: str) -> int:
    """How many of *pid*'s TCP sockets on local *port* are in *status* (a psutil CONN_*)."""
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status == status)


def _connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    return {pid: _sockets(pid, port, psutil.CONN_ESTABLISHED) for pid in pids}


def _listening(pid: int, port: int) -> bool:
    return _sockets(pid, port, psutil.CONN_LISTEN) > 0


def test_every_worker_listens_on_the_one_port_and_answers(workers) -> None:
    proc, port, _ = workers
    children = [c.pid for c in psutil.Process(proc.pid).children()]
    assert len(children) == 1
    # "listening on" is printed only once every worker's own socket listens (each reports
    # through a pipe): a script that connects on that line reaches every worker.
    assert all(_listening(pid, port) for pid in [proc.pid, *children])
    data = os.urandom(100_000)
    md5 = hashlib.md5(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("PUT", f"/{md5}", body=data)
    assert conn.getresponse().status == 200
    conn.close()
    conns = []
    for _ in range(32):  # SO_REUSEPORT spreads connections by hash: 32 all on one process is 2**-31 likely
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", f"/{md5}+{len(data)}")
        resp = c.getresponse()
        assert (resp.status, resp.read()) == (200, data)  # every worker serves the same volume
        conns.append(c)
    counts = _connections_by_process([proc.pid, *children], port)
    assert all(n >= 1 for n in counts.values()), counts
    assert sum(counts.values()) == 32
    for c in conns:
        c.close()


def test_sigterm_to_the_first_process_stops_every_worker(workers) -> None:
    proc, _, _ = workers
    children = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive


def test_workers_share_block_locks_through_a_file_in_the_first_volume(workers) -> None:
    _, port, volume = workers
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("PUT", f"/{hashlib.md5(b'locked').hexdigest()}", body=b"locked")
    assert conn.getresponse().status == 200
    conn.close()
    assert (volume / ".keep-locks").is_file()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/index", headers={"Authorization": "Bearer nobody"})
    assert conn.getresponse().status in (401, 403)  # the lock file is no block, and /index stays guarded
    conn.close()


def test_a_worker_without_background_jobs_never_runs_them(tmp_path: Path) -> None:
    with KeepServer([tmp_path / "a"], fsync=False, trash_check_interval=0.01) as first:
        assert first.trash_emptier.wait_for_passes(1, timeout=30)
    worker = KeepServer([tmp_path / "b"], fsync=False, trash_check_interval=0.01, background=False)
    with worker:
        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
        for _ in range(20):  # far longer than the interval: the emptier would have run by now
            conn.request("PUT", f"/{hashlib.md5(b'x').hexdigest()}", body=b"x")
            assert conn.getresponse().read()
        conn.close()
        assert worker.trash_emptier.passes == 0


def test_workers_must_be_at_least_one(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "keepstore", "serve", "--listen", "127.0.0.1:0", "--volume",
                           str(tmp_path), "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--workers must be at least 1" in done.stderr
