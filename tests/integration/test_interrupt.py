"""A stop you can trust: Ctrl-C ends ``keep`` within a second or so, exit 130, nothing half-written;
`KeepClient.cancel` ends transfers in flight and backoff waits."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_processes import TOKEN, SilentServer, keep_command, private_env, refused_url

from keepstore import KeepClient, Retry
from keepstore.client import RetryNotice
from keepstore.errors import Cancelled
from keepstore.server import KeepServer

LOC = "acbd18db4cc2f85cedef654fccc4a4d8+3"
LIMIT = 10.0  # seconds from SIGINT to exit, generous for a loaded machine; the aim is well under one


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, float, str, str]:
    """SIGINT *process*; its exit code, the seconds it took to exit, stdout and stderr."""
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode, time.monotonic() - started, out, err


def _start(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(keep_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, cwd=cwd)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.wall_clock
@pytest.mark.parametrize("args", [["put", "--no-progress"], ["put", "--blocks"]])
def test_ctrl_c_stops_a_put_whose_server_never_answers(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data").write_bytes(os.urandom(3 << 20))
    with SilentServer() as silent:
        env = private_env(tmp_path, KEEP_SERVICES=f"{silent.url} {silent.url}x/", KEEP_TOKEN=TOKEN)
        process = _start(env, *args, str(tmp_path / "in" / "data"))
        assert silent.connected.wait(60), "the PUT never reached the server"
        code, seconds, out, err = _interrupt(process)
    assert (code, out) == (130, ""), err
    assert err.endswith("keep: interrupted\n") and "Traceback" not in err
    assert seconds < LIMIT
    assert _leftovers(tmp_path / "in") == ["data"]


@pytest.mark.wall_clock
def test_ctrl_c_stops_a_put_waiting_to_retry(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"foo")
    env = private_env(tmp_path, KEEP_SERVICES=refused_url(), KEEP_TOKEN=TOKEN)
    process = _start(env, "put", "--blocks", "--deadline", "600", str(tmp_path / "data"))
    assert process.stderr is not None
    line = process.stderr.readline()  # the first notice: it is now in a backoff wait (or the next round)
    assert line.startswith("keep: retrying: PUT ")
    code, seconds, out, err = _interrupt(process)
    assert (code, out, err) == (130, "", err) and err.endswith("keep: interrupted\n")
    assert seconds < LIMIT


@pytest.mark.wall_clock
def test_ctrl_c_during_a_get_leaves_no_file(tmp_path: Path) -> None:
    with SilentServer() as silent:
        env = private_env(tmp_path, KEEP_SERVICES=silent.url, KEEP_TOKEN=TOKEN)
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        process = _start(env, "get", LOC, str(out_dir / "block"))
        assert silent.connected.wait(60)
        code, seconds, _, err = _interrupt(process)
    assert code == 130 and seconds < LIMIT, err
    assert _leftovers(out_dir) == []


@pytest.mark.wall_clock
def test_ctrl_c_while_a_dataset_block_is_in_flight_leaves_no_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = os.urandom(1 << 20)
    (source / "big").write_bytes(data)
    with KeepServer([tmp_path / "vol"], fsync=False) as server:
        env = private_env(tmp_path, KEEP_SERVICES=server.url, KEEP_TOKEN=TOKEN)
        put = subprocess.run(keep_command("put", "--no-progress", "--copies", "1", str(source)), env=env,
                             capture_output=True, text=True, timeout=120)
        assert put.returncode == 0, put.stderr
        dataset = put.stdout.split()[0]
        import hashlib

        server.faults.stall(300, methods="GET", block=hashlib.md5(data, usedforsecurity=False).hexdigest())
        dest = tmp_path / "dest"
        dest.mkdir()
        process = _start(env, "get", "--no-progress", dataset, str(dest))
        deadline = time.monotonic() + 60
        while not any(r.fault == "stall" for r in list(server.requests)):  # the block's GET is in flight
            assert time.monotonic() < deadline and process.poll() is None
            threading.Event().wait(0.05)
        code, seconds, _, err = _interrupt(process)
        server.faults.clear()
    assert code == 130 and seconds < LIMIT, err
    assert _leftovers(dest) == []


@pytest.mark.wall_clock
def test_ctrl_c_typed_at_a_terminal_stops_keep(tmp_path: Path) -> None:
    """The real thing: ^C on a pty makes the terminal send SIGINT to the foreground process."""
    (tmp_path / "data").write_bytes(os.urandom(1 << 20))
    with SilentServer() as silent:
        env = private_env(tmp_path, KEEP_SERVICES=silent.url, KEEP_TOKEN=TOKEN, TERM="dumb")
        pid, fd = pty.fork()
        if pid == 0:  # the child: keep on the pty as its controlling terminal
            os.execve(keep_command()[0], keep_command("put", "--blocks", str(tmp_path / "data")), env)
        try:
            assert silent.connected.wait(60)
            started = time.monotonic()
            os.write(fd, b"\x03")
            output = b""
            while True:
                ready, _, _ = select.select([fd], [], [], 60)
                assert ready, "keep did not stop"
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            _, status = os.waitpid(pid, 0)
            seconds = time.monotonic() - started
        finally:
            os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, output
    assert b"keep: interrupted" in output and seconds < LIMIT


@pytest.mark.wall_clock
def test_cancel_from_another_thread_ends_a_get_in_flight() -> None:
    with SilentServer() as silent, KeepClient([silent.url], token=TOKEN) as kc:
        outcome: list[BaseException] = []

        def read() -> None:
            try:
                kc.get(LOC)
            except BaseException as exc:  # whatever the reader got is the test's result
                outcome.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        assert silent.connected.wait(60)
        started = time.monotonic()
        kc.cancel()
        reader.join(LIMIT)
        seconds = time.monotonic() - started
        assert not reader.is_alive() and seconds < LIMIT
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    assert kc.cancelled


def test_cancel_ends_the_backoff_wait_and_no_further_round_runs() -> None:
    root = refused_url()
    notices: list[RetryNotice] = []

    def on_retry(notice: RetryNotice) -> None:
        notices.append(notice)
        kc.cancel()  # as a Ctrl-C handler would, while the client is about to wait

    kc = KeepClient([root], retries=Retry(total=10, backoff_initial=3600, backoff_max=3600), on_retry=on_retry)
    with kc, pytest.raises(Cancelled, match=re.escape(f"GET {LOC} cancelled")):
        kc.get(LOC)  # the hour-long backoff wait returns at once
    assert len(notices) == 1 and kc.stats().requests == 1


def test_a_cancelled_client_sends_nothing_more(keep_server: KeepServer) -> None:
    with KeepClient([keep_server.url], token=TOKEN) as kc:
        loc = kc.put(b"foo", copies=1)
        sent = len(keep_server.requests)
        kc.cancel()
        with pytest.raises(Cancelled):
            kc.get(loc)
        with pytest.raises(Cancelled):
            kc.put(b"bar", copies=1)
    assert len(keep_server.requests) == sent


@pytest.mark.wall_clock
@pytest.mark.parametrize("command", ["head", "cat", "ls"])
def test_ctrl_c_stops_the_other_commands_too(tmp_path: Path, command: str) -> None:
    with SilentServer() as silent:
        env = private_env(tmp_path, KEEP_SERVICES=silent.url, KEEP_TOKEN=TOKEN)
        process = _start(env, command, LOC)
        assert silent.connected.wait(60)
        code, seconds, out, err = _interrupt(process)
    assert (code, out) == (130, "") and err.endswith("keep: interrupted\n"), err
    assert seconds < LIMIT
