"""Progress of keep put/get: a bar that moves as bytes move, a summary line that stays, IEC units, JSON lines."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_processes import on_a_terminal

from keepstore.cli.progress import (
    Progress,
    ProgressMode,
    format_bytes,
    format_duration,
    open_progress,
    showing_retries,
)

MiB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- units and the summary line --------------------------------------------------------------------


@pytest.mark.parametrize(("n", "shown"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
                                          (20 * MiB, "20.0 MiB"), (286 * MiB, "286 MiB"), (1 << 30, "1.00 GiB"),
                                          (5 << 40, "5.00 TiB")])
def test_bytes_are_shown_in_binary_units(n, shown):
    assert format_bytes(n) == shown


def test_durations_read_as_seconds_minutes_and_hours():
    assert [format_duration(s) for s in (0.5, 12.34, 125, 3720)] == ["0.50 s", "12.3 s", "2 min 05 s", "1 h 02 min"]


def test_summary_line_gives_files_bytes_time_rate_and_skipped_bytes():
    clock, out = FakeClock(), io.StringIO()
    with open_progress("summary", "put", total_bytes=30 * MiB, total_files=2, stream=out, clock=clock) as p:
        p.advance(10 * MiB)
        p.skipped(20 * MiB)
        p.file_done(2)
        clock.now += 2.0
        summary = p.finish()
    assert out.getvalue() == "put: 2 files, 30.0 MiB in 2.00 s (15.0 MiB/s), 20.0 MiB skipped\n"
    assert summary.to_dict() == {"op": "put", "files": 2, "bytes": 30 * MiB, "stored_bytes": 0,
                                 "skipped_bytes": 20 * MiB, "elapsed": 2.0, "rate": 15.0 * MiB}


def test_auto_mode_shows_nothing_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    with open_progress(ProgressMode.AUTO, "get", total_bytes=10, stream=out) as p:
        p.advance(10)
        p.finish(files=1)
    assert out.getvalue() == ""


def test_an_error_leaves_no_summary_line():
    out = TtyStringIO()
    with pytest.raises(OSError), open_progress("bar", "get", total_bytes=10, stream=out) as p:
        p.advance(5)
        raise OSError("disk full")
    assert "get:" in out.getvalue() and "skipped" not in out.getvalue()


def test_bar_mode_labels_binary_units_and_ends_with_the_summary():
    out = TtyStringIO()
    clock = FakeClock()
    with open_progress("bar", "put", total_bytes=4 * MiB, total_files=1, stream=out, clock=clock) as p:
        p.advance(4 * MiB)
        p.file_done()
        clock.now += 1.0
        p.finish()
    text = out.getvalue()
    assert "MiB" in text and "MB" not in text.replace("MiB", "")
    assert text.rstrip("\n").rsplit("\r", 1)[-1].splitlines()[-1] == "put: 1 file, 4.00 MiB in 1.00 s (4.00 MiB/s), 0 B skipped"


# -- JSON lines -------------------------------------------------------------------------------------


def test_json_lines_start_progress_at_most_every_interval_and_done():
    clock, out = FakeClock(), io.StringIO()
    with open_progress("json", "put", total_bytes=100, total_files=1, stream=out, clock=clock, interval=1.0) as p:
        for _ in range(10):  # ten advances 0.25 s apart: progress lines at 1, 2 s (not ten of them)
            clock.now += 0.25
            p.advance(10)
        p.notice("retrying")
        p.file_done()
        p.finish()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["event"] for d in lines] == ["start", "progress", "progress", "notice", "done"]
    assert [d["bytes"] for d in lines if d["event"] == "progress"] == [40, 80]
    assert lines[0]["total_bytes"] == 100 and lines[0]["bytes"] == 0
    assert lines[-1] == {"event": "done", "op": "put", "files": 1, "bytes": 100, "stored_bytes": 0,
                         "skipped_bytes": 0, "elapsed": 2.5, "rate": 40.0}


def test_counts_from_many_threads_add_up():
    p = Progress("put", total_bytes=None)

    def work() -> None:
        for _ in range(1000):
            p.advance(3)
            p.stored(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = p.snapshot()
    assert (snap.bytes, snap.stored_bytes) == (24000, 8000)


def test_waiting_state_shows_in_snapshots_and_is_cleared():
    p = Progress("put")
    p.waiting("retry 2 of 5 in 3 s")
    assert p.snapshot().state == "retry 2 of 5 in 3 s"
    p.waiting(None)
    assert p.snapshot().state is None


# -- through the real command, with stderr on a pseudo-terminal ------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_", "TQDM_"))}
    base.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
                XDG_DATA_HOME=str(tmp_path / "data"), KEEP_LOCAL_STORE=str(tmp_path / "store"))
    return base


def keep(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, input=stdin,
                          capture_output=True, timeout=120)




_DRAWN = re.compile(r"(\d+(?:\.\d+)?) (B|KiB|MiB)/(\d+(?:\.\d+)?) (B|KiB|MiB) \[")


def bar_positions(shown: str) -> list[float]:
    """The byte counts (in MiB) of every bar the terminal was sent."""
    scale = {"B": 1 / MiB, "KiB": 1 / 1024, "MiB": 1.0}
    return [float(n) * scale[u] for n, u, _t, _tu in _DRAWN.findall(shown)]


def last_line(shown: str) -> str:
    """What the terminal shows last: the bar is erased with carriage returns, the summary stays."""
    text = shown.replace("\r\n", "\n").rstrip("\n")
    return text.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]


@pytest.fixture
def tty_env(env: dict[str, str]) -> dict[str, str]:
    # tqdm redraws at most every 0.1 s, and a local 20 MiB put takes less: draw every update, so the
    # test sees each position the command reports (what is tested is how often it reports).
    return {**env, "TQDM_MININTERVAL": "0"}


def test_put_bar_moves_within_one_block_and_leaves_a_summary_line(tty_env, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * MiB))  # under one 64 MiB block
    code, out, shown = on_a_terminal(tty_env, "put", str(src))
    assert code == 0 and out.strip()
    positions = bar_positions(shown)
    assert any(0 < p < 20 for p in positions), shown[-800:]  # a position inside the block
    assert positions == sorted(positions) and max(positions) == 20
    assert "MB/s" not in shown and "MiB/s" in shown
    assert re.fullmatch(r"put: 1 file, 20\.0 MiB in [\d.]+ s \([\d.]+ (?:[KMGT]i)?B/s\), 0 B skipped", last_line(shown))


def test_get_bar_moves_within_one_block_and_leaves_a_summary_line(tty_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(20 * MiB))
    loc = keep(tty_env, "put", str(src)).stdout.decode().strip()
    code, _out, shown = on_a_terminal(tty_env, "get", loc, str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert any(0 < p < 20 for p in bar_positions(shown)), shown[-800:]
    assert re.fullmatch(r"get: 1 file, 20\.0 MiB in .* 0 B skipped", last_line(shown))


def test_get_of_one_file_moves_the_bar_as_it_streams(tty_env, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(20 * MiB))
    loc = keep(tty_env, "put", str(tmp_path / "big.bin")).stdout.decode().strip()
    code, _out, shown = on_a_terminal(tty_env, "get", f"{loc}/big.bin", str(tmp_path / "copy"))
    assert code == 0 and (tmp_path / "copy").read_bytes() == (tmp_path / "big.bin").read_bytes()
    assert any(0 < p < 20 for p in bar_positions(shown)), shown[-800:]
    assert last_line(shown).startswith("get: 1 file, 20.0 MiB in ")


def test_a_terminal_that_reports_no_width_still_gets_a_bar(tty_env, tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(10 * MiB))
    code, _out, shown = on_a_terminal(tty_env, "put", str(tmp_path / "f"), columns=0)
    assert code == 0 and any(0 < p < 10 for p in bar_positions(shown)), shown[-800:]


def test_no_progress_still_means_nothing_on_the_terminal(tty_env, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)
    code, _out, shown = on_a_terminal(tty_env, "put", "--no-progress", str(tmp_path / "f"))
    assert code == 0 and shown == ""


# -- JSON lines and the summary through the real command -------------------------------------------


def test_progress_json_is_one_object_per_line_ending_in_done(keep_server, tmp_path):
    from keepstore.testing import DEFAULT_SYSTEM_TOKEN

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), KEEP_SERVICES=keep_server.url,
               KEEP_TOKEN=DEFAULT_SYSTEM_TOKEN)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(100_000))
    put = keep(env, "put", "--copies", "1", "--progress=json", str(src))
    assert put.returncode == 0, put.stderr
    events = [json.loads(line) for line in put.stderr.decode().splitlines()]
    assert events[0]["event"] == "start" and events[0]["total_bytes"] == 300_000 and events[0]["total_files"] == 3
    done = events[-1]
    assert done["event"] == "done" and (done["files"], done["bytes"], done["stored_bytes"]) == (3, 300_000, 300_000)
    get = keep(env, "get", "--progress=json", put.stdout.decode().strip(), str(tmp_path / "out"))
    assert get.returncode == 0, get.stderr
    last = json.loads(get.stderr.decode().splitlines()[-1])
    assert (last["event"], last["op"], last["files"], last["bytes"]) == ("done", "get", 3, 300_000)


def test_progress_summary_prints_only_the_summary_even_when_piped(env, tmp_path):
    (tmp_path / "f").write_bytes(b"y" * 2048)
    put = keep(env, "put", "--progress=summary", str(tmp_path / "f"))
    assert put.returncode == 0
    assert re.fullmatch(rb"put: 1 file, 2\.00 KiB in .* 0 B skipped\n", put.stderr), put.stderr


def test_an_unknown_progress_mode_is_a_usage_error(env, tmp_path):
    result = keep(env, "put", "--progress=loud", "-")
    assert result.returncode == 2 and b"invalid choice: 'loud'" in result.stderr


# -- retry notices from the client ------------------------------------------------------------------


class RetryLines:
    """The interface of keep's retry-notice callback (args.on_retry) that progress relies on."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.write = self.written.append
        self.listeners: list = []

    def listen(self, listener) -> None:
        self.listeners.append(listener)

    def announce(self, line: str, wait: float) -> None:
        self.write(line)
        notice = type("Notice", (), {"wait": wait, "round": 2, "rounds": 5})()
        for listener in self.listeners:
            listener(notice)


def test_retry_notices_become_json_lines_and_the_wait_shows_until_bytes_move():
    clock, out, lines = FakeClock(), io.StringIO(), RetryLines()
    with open_progress("json", "put", total_bytes=10, stream=out, clock=clock) as p:
        with showing_retries(p, lines):
            lines.announce("keep: retrying: PUT http://127.0.0.1:1/: connection refused", 1.5)
            assert p.snapshot().state == "waiting 1.5 s to retry (round 2 of 5)"
            p.stored(10)
            assert p.snapshot().state is None
        lines.announce("keep: retrying: after the transfer", 1.0)
        assert p.snapshot().state is None  # no longer routed
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {"event": "notice", "message": "retrying: PUT http://127.0.0.1:1/: connection refused"} in events
    assert lines.written == ["keep: retrying: after the transfer"]  # the usual writer is back


def test_a_wait_is_drawn_on_the_bar_at_once():
    out, lines = TtyStringIO(), RetryLines()
    with open_progress("bar", "get", total_bytes=10, stream=out) as p, showing_retries(p, lines):
        lines.announce("keep: retrying: GET x: 503", 2.0)
        assert "waiting 2.0 s to retry" in out.getvalue()
        assert "keep: retrying: GET x: 503" in out.getvalue()


def test_get_skip_existing_counts_the_kept_files_as_skipped_bytes(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 3000)
    (src / "b").write_bytes(b"b" * 5000)
    loc = keep(env, "put", str(src)).stdout.decode().strip()
    out = tmp_path / "out"
    assert keep(env, "get", loc, str(out)).returncode == 0
    (out / "b").unlink()
    again = keep(env, "get", "--skip-existing", "--progress=json", loc, str(out))
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stderr.decode().splitlines()[-1])
    assert (done["event"], done["files"], done["bytes"], done["skipped_bytes"]) == ("done", 2, 8000, 3000)
    one = keep(env, "get", "--skip-existing", "--progress=summary", f"{loc}/a", str(out / "a"))
    assert one.returncode == 0 and one.stderr.decode().endswith("2.93 KiB skipped\n"), one.stderr


def test_with_json_progress_retry_lines_are_json_for_the_whole_command():
    import argparse

    from keepstore.cli.progress import json_notices

    out, lines = io.StringIO(), RetryLines()
    json_notices(argparse.Namespace(progress="json", on_retry=lines), out)
    lines.announce("keep: retrying: GET http://127.0.0.1:1/: connection refused", 1.0)  # e.g. the manifest
    assert json.loads(out.getvalue()) == {"event": "notice",
                                          "message": "retrying: GET http://127.0.0.1:1/: connection refused"}
    plain = RetryLines()
    json_notices(argparse.Namespace(progress="auto", on_retry=plain))
    plain.announce("keep: retrying: x", 1.0)
    assert plain.written == ["keep: retrying: x"]


def test_with_json_progress_an_error_is_a_json_line_too(env, tmp_path):
    from keepstore.locator import Locator

    absent = str(Locator.for_data(b"never stored"))
    result = keep(env, "get", "--progress=json", absent, str(tmp_path / "out"))
    assert result.returncode == 3
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])
    assert error["event"] == "error" and error["exit_code"] == 3 and absent.split("+")[0] in error["message"]
