"""Retries you can see: `RetryNotice` for every backed-off round, and ``keep`` printing one line
per service, cause and round on stderr."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from cli_processes import TOKEN, private_env, refused_url, run_keep

from keepstore import KeepClient, Retry
from keepstore.cli.notices import RetryNotices
from keepstore.client import RetryNotice
from keepstore.errors import ReadError
from keepstore.server import KeepServer

LOC = "acbd18db4cc2f85cedef654fccc4a4d8+3"
NOTICE = re.compile(r"keep: retrying: (GET|PUT) (\S+): (.+) \(round (\d+) of (\d+), next attempt in [0-9.]+ s\)\Z")


def test_keep_get_prints_one_line_per_service_and_round_then_one_error(tmp_path: Path) -> None:
    first, second = refused_url(), refused_url()
    env = private_env(tmp_path, KEEP_SERVICES=f"{first} {second}", KEEP_TOKEN=TOKEN)
    result = run_keep(env, "get", "--deadline", "1.5", LOC)
    lines = result.stderr.splitlines()
    notices = [NOTICE.match(line) for line in lines[:-1]]
    assert result.returncode == 1 and all(notices), result.stderr
    seen = [(m.group(2), m.group(3), int(m.group(4))) for m in notices if m]
    assert len(seen) == len(set(seen)), "each service, cause and round is announced once"
    assert {root for root, _, _ in seen} == {first, second}
    assert {cause for _, cause, _ in seen} == {"connection refused"}
    assert {m.group(5) for m in notices if m} == {"11"}  # 10 retries: 11 rounds at most
    rounds_of_first = [n for root, _, n in seen if root == first]
    assert rounds_of_first == list(range(1, len(rounds_of_first) + 1))
    error = lines[-1]
    assert error.startswith("keep: error: ") and "deadline" in error
    assert error.count(first) == 1 and error.count(second) == 1, "each service's last error, once"


def test_keep_put_announces_the_put_that_is_retried(tmp_path: Path) -> None:
    root = refused_url()
    (tmp_path / "f").write_bytes(b"foo")
    env = private_env(tmp_path, KEEP_SERVICES=root, KEEP_TOKEN=TOKEN)
    result = run_keep(env, "put", "--blocks", "--copies", "1", "--deadline", "1", str(tmp_path / "f"))
    assert result.returncode == 1
    assert f"keep: retrying: PUT {root}: connection refused (round 1 of 11, next attempt in" in result.stderr
    assert result.stdout == ""


def test_on_retry_gets_each_failed_round_with_the_servers_reason(keep_server: KeepServer) -> None:
    loc = KeepClient([keep_server.url], sleep=lambda s: None).put(b"foo", copies=1)
    keep_server.faults.fail(503, times=2, methods="GET")
    notices: list[RetryNotice] = []
    slept: list[float] = []
    with KeepClient([keep_server.url], sleep=slept.append, on_retry=notices.append) as kc:
        assert kc.get(loc) == b"foo"
    assert [n.round for n in notices] == [1, 2]
    assert {(n.operation, n.locator, n.rounds) for n in notices} == {("GET", str(loc.bare()), 11)}
    assert [n.wait for n in notices] == slept
    assert [dict(n.failures) for n in notices] == [{keep_server.url: "503 injected fault 503"}] * 2


def test_no_notice_when_the_first_round_succeeds(keep_server: KeepServer) -> None:
    notices: list[RetryNotice] = []
    with KeepClient([keep_server.url], on_retry=notices.append) as kc:
        kc.get(kc.put(b"bar", copies=1))
    assert notices == []


def test_no_notice_after_the_last_round() -> None:
    root = refused_url()
    notices: list[RetryNotice] = []
    with KeepClient([root], retries=Retry(total=2), sleep=lambda s: None, on_retry=notices.append) as kc, \
            pytest.raises(ReadError):
        kc.get(LOC)
    assert [(n.round, n.rounds) for n in notices] == [(1, 3), (2, 3)]


def test_retry_notices_print_a_line_once_per_service_cause_and_round() -> None:
    printed: list[str] = []
    heard: list[RetryNotice] = []
    notices = RetryNotices(printed.append)
    notices.listen(heard.append)
    a = RetryNotice("PUT", LOC, 1, 11, 0.5, {"http://a/": "503 busy", "http://b/": "connection refused"})
    notices(a)
    notices(RetryNotice("PUT", "37b51d194a7513e45b56f6524f2d51f2+3", 1, 11, 0.7, {"http://a/": "503 busy"}))
    notices(RetryNotice("PUT", LOC, 2, 11, 1.5, {"http://a/": "503 busy"}))
    assert printed == [
        "keep: retrying: PUT http://a/: 503 busy (round 1 of 11, next attempt in 0.5 s)",
        "keep: retrying: PUT http://b/: connection refused (round 1 of 11, next attempt in 0.5 s)",
        "keep: retrying: PUT http://a/: 503 busy (round 2 of 11, next attempt in 1.5 s)",
    ]
    assert len(heard) == 3 and heard[0] is a


def test_each_retry_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    root = refused_url()
    caplog.set_level(logging.INFO, logger="keepstore.client")
    with KeepClient([root], retries=1, sleep=lambda s: None) as kc, pytest.raises(ReadError):
        kc.get(LOC)
    lines = [r.getMessage() for r in caplog.records if r.name == "keepstore.client"]
    assert len(lines) == 1 and lines[0].startswith(f"GET {root}: connection refused (round 1 of 2, next attempt in")


def test_the_notice_lines_in_docs_client_md_are_what_keep_prints() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()
    block = re.search(r"```text\n(keep: retrying: .*?)```", text, re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    assert lines and all(NOTICE.match(line) for line in lines)


def test_a_notice_does_not_tear_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from tqdm import tqdm

    with tqdm(total=10, file=sys.stderr, mininterval=0) as bar:
        bar.update(3)
        RetryNotices()(RetryNotice("GET", LOC, 1, 11, 0.5, {"http://a/": "503 busy"}))
        bar.update(3)
    err = capsys.readouterr().err
    at = err.index("keep: retrying: GET http://a/: 503 busy")
    assert err[at - 1] in "\r\n", "the bar is cleared before the line, not written over"
