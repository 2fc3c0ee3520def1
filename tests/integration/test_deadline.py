"""Fail fast: `Retry.deadline`, ``keep --deadline`` (15 s by default) and errors that list each
service's last failure once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cli_processes import TOKEN, SilentServer, private_env, refused_url, run_keep

from keepstore import KeepClient, Retry, Timeout
from keepstore.cli import build_parser
from keepstore.errors import ConfigError, ReadError, WriteError
from keepstore.open import CLI_DEADLINE, open_store
from keepstore.transport import MockTransport, Request, Response

LOC = "acbd18db4cc2f85cedef654fccc4a4d8+3"


class FakeTime:
    """A clock that only the fake sleep (and the test) moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_deadline_ends_the_rounds_on_the_clock_given() -> None:
    clock = FakeTime()
    policy = Retry(total=1000, backoff_initial=1.0, backoff_max=1.0, deadline=10)
    kc = KeepClient([refused_url()], retries=policy, sleep=clock.sleep, clock=clock)
    with kc, pytest.raises(ReadError, match=r"within the 10 s deadline \(\d+ round\(s\)\)"):
        kc.get(LOC)
    rounds = kc.stats().retries + 1
    assert 10 < rounds < 1000
    assert clock.now <= 10


def test_near_the_deadline_a_round_gets_only_the_time_left() -> None:
    clock = FakeTime()
    seen: list[tuple[float, float]] = []

    def busy(request: Request) -> Response:
        seen.append((request.timeout.connect, request.timeout.read))
        clock.now += 4  # each answer takes 4 s
        return Response(503, body=b"busy\n")

    policy = Retry(total=50, backoff_initial=0.0, backoff_max=0.0, deadline=10)
    kc = KeepClient(["http://127.0.0.1:9/"], transport=MockTransport(busy), retries=policy,
                    timeout=Timeout(connect=2, read=256), sleep=clock.sleep, clock=clock)
    with kc, pytest.raises(ReadError) as info:
        kc.get(LOC)
    assert seen == [(2, 10), (4, 6), (2, 2)]  # connect doubles, but no round outlasts the deadline
    assert "503 busy" in str(info.value)


def test_without_a_deadline_the_rounds_run_out_as_before() -> None:
    clock = FakeTime()
    kc = KeepClient([refused_url()], retries=3, sleep=clock.sleep, clock=clock)
    with kc, pytest.raises(ReadError, match="after 4 round"):
        kc.get(LOC)
    assert len(clock.slept) == 3


def test_a_write_error_gives_each_services_last_error_once() -> None:
    first, second = refused_url(), refused_url()
    kc = KeepClient([first, second], retries=3, sleep=lambda s: None)
    with kc, pytest.raises(WriteError) as info:
        kc.put(b"foo", copies=2)
    message = str(info.value)
    for root in (first, second):
        assert message.count(root) == 1
        assert f"{root}: PUT connection refused (4 attempts)" in message
        assert info.value.attempts[root] == ", ".join(["PUT connection refused"] * 4)  # the full history


@pytest.mark.parametrize(("argv", "environ", "config", "expected"), [
    (["get", LOC], {}, "", CLI_DEADLINE),
    (["get", LOC], {"KEEP_DEADLINE": "4"}, "", 4.0),
    (["get", LOC], {}, "deadline: 7\n", 7.0),
    (["--deadline", "2", "get", LOC], {"KEEP_DEADLINE": "4"}, "", 2.0),
    (["get", "--deadline", "2.5", LOC], {}, "deadline: 7\n", 2.5),
])
def test_keep_commands_get_a_deadline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str],
                                      environ: dict[str, str], config: str, expected: float) -> None:
    monkeypatch.setenv("KEEP_SERVICES", "http://127.0.0.1:9/")
    monkeypatch.setenv("KEEP_TOKEN", TOKEN)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if config:
        path = tmp_path / "config.yml"
        path.write_text(config)
        monkeypatch.setenv("KEEP_CONFIG", str(path))
    with open_store(build_parser().parse_args(argv)) as store:
        assert isinstance(store, KeepClient) and store.retry.deadline == expected


def test_the_library_default_has_no_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP_SERVICES", "http://127.0.0.1:9/")
    with KeepClient.from_env() as kc:
        assert isinstance(kc, KeepClient) and kc.retry.deadline is None


@pytest.mark.parametrize("value", ["soon", "0", "-3", "inf"])
def test_a_bad_keep_deadline_is_a_config_error_naming_it(value: str) -> None:
    from keepstore.settings import Settings

    with pytest.raises(ConfigError, match="KEEP_DEADLINE"):
        Settings.from_env({"KEEP_DEADLINE": value})


@pytest.mark.parametrize("value", [0, -1, float("inf"), True])
def test_a_bad_retry_deadline_is_a_config_error(value: float) -> None:
    with pytest.raises(ConfigError, match=r"Retry\.deadline"):
        Retry(deadline=value)


def test_keep_refuses_a_deadline_that_is_not_a_positive_number(tmp_path: Path) -> None:
    result = run_keep(private_env(tmp_path), "get", "--deadline", "0", LOC)
    assert result.returncode == 2 and "must be a positive number of seconds" in result.stderr


@pytest.mark.wall_clock
def test_keep_with_every_service_refusing_gives_up_by_its_deadline(tmp_path: Path) -> None:
    env = private_env(tmp_path, KEEP_SERVICES=f"{refused_url()} {refused_url()}", KEEP_TOKEN=TOKEN)
    started = time.monotonic()
    result = run_keep(env, "--deadline", "3", "get", LOC)
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and "within the 3 s deadline" in result.stderr.splitlines()[-1]
    assert elapsed < 3 + 20  # generous for a loaded machine; without the deadline: about 90 s


@pytest.mark.wall_clock
def test_a_deadline_also_gives_up_on_a_server_that_never_answers(tmp_path: Path) -> None:
    with SilentServer() as silent:
        env = private_env(tmp_path, KEEP_SERVICES=silent.url, KEEP_TOKEN=TOKEN)
        started = time.monotonic()
        result = run_keep(env, "--deadline", "2", "get", LOC)
        elapsed = time.monotonic() - started
    assert result.returncode == 1 and "deadline" in result.stderr.splitlines()[-1]
    assert elapsed < 2 + 20  # the read timeout alone is 256 s


def test_keep_config_shows_the_deadline_and_where_it_came_from(tmp_path: Path) -> None:
    import json

    result = run_keep(private_env(tmp_path, KEEP_DEADLINE="9"), "config", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["settings"]["deadline"]
    assert shown == {"value": 9.0, "from": "environment KEEP_DEADLINE"}


def test_one_service_calls_are_bounded_by_the_deadline_too() -> None:
    seen: list[tuple[float, float]] = []

    def answer(request: Request) -> Response:
        seen.append((request.timeout.connect, request.timeout.read))
        return Response(404)

    for retry, expected in ((Retry(deadline=5), (2, 5)), (Retry(deadline=1.5), (1.5, 1.5)), (Retry(), (2, 256))):
        with KeepClient(["http://127.0.0.1:9/"], transport=MockTransport(answer), retries=retry) as kc:
            assert kc.head_on(kc.services[0], LOC) is False
        assert seen.pop() == expected
