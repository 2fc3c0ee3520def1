"""Messages that say what is wrong: the server's reason text in client errors (never the token),
classes confirmed, dataset paths, locator sizes and ``keep serve --listen``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import TOKEN, private_env, run_keep
from pytest_httpserver import HTTPServer

from keepstore import KeepClient, Locator
from keepstore.client.wire import REASON_LIMIT, reason_text
from keepstore.errors import BlockNotFound, LocatorError, ReadError, WriteError
from keepstore.server import KeepServer

KEY = "opclient-signing-key-0123456789"
OTHER = "another-users-token-0123456789"


@pytest.fixture
def signing_server(tmp_path: Path) -> Iterator[KeepServer]:
    with KeepServer([tmp_path / "vol"], signing_key=KEY, require_signatures=True, fsync=False) as server:
        yield server


def test_a_missing_token_and_a_wrong_signature_say_so(signing_server: KeepServer) -> None:
    with KeepClient([signing_server.url], token=TOKEN) as kc:
        loc = kc.put(b"foo", copies=1)
    with KeepClient([signing_server.url], retries=0) as anonymous, pytest.raises(ReadError) as info:
        anonymous.get(loc)
    assert f"{signing_server.url}: 401 no token" in str(info.value)
    with KeepClient([signing_server.url], token=OTHER, retries=0) as other, pytest.raises(ReadError) as info:
        other.get(loc)
    assert f"{signing_server.url}: 400 invalid signature" in str(info.value)
    assert OTHER not in str(info.value) and TOKEN not in str(info.value)


def test_keep_get_with_the_wrong_token_prints_the_servers_reason(signing_server: KeepServer, tmp_path: Path) -> None:
    with KeepClient([signing_server.url], token=TOKEN) as kc:
        loc = kc.put(b"foo", copies=1)
    result = run_keep(private_env(tmp_path, KEEP_SERVICES=signing_server.url, KEEP_TOKEN=OTHER), "get", str(loc))
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("keep: error: ") and "400 invalid signature" in last and OTHER not in result.stderr


def test_a_server_echoing_the_token_never_gets_it_into_the_message(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/acbd18db4cc2f85cedef654fccc4a4d8").respond_with_data(
        f"bad token {TOKEN} from you\nsecond line", status=400)
    with KeepClient([httpserver.url_for("/")], token=TOKEN, retries=0) as kc, pytest.raises(WriteError) as info:
        kc.put(b"foo", copies=1)
    assert "400 bad token *** from you" in str(info.value) and TOKEN not in str(info.value)
    assert "second line" not in str(info.value)


def test_a_403_names_what_the_server_said(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/acbd18db4cc2f85cedef654fccc4a4d8+3").respond_with_data("denied by policy", status=403)
    with KeepClient([httpserver.url_for("/")], token=TOKEN) as kc, pytest.raises(BlockNotFound) as info:
        kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
    assert "403 denied by policy" in str(info.value)


def test_a_plain_404_keeps_the_short_message(keep_server: KeepServer) -> None:
    with KeepClient([keep_server.url]) as kc, pytest.raises(BlockNotFound) as info:
        kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
    assert str(info.value).endswith("acbd18db4cc2f85cedef654fccc4a4d8+3 not found on 1 service(s)")


@pytest.mark.parametrize(("status", "body", "reason"), [
    (400, b"400 invalid signature\n", "invalid signature"),
    (503, b"too busy\r\nRetry later", "too busy"),
    (502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "Bad Gateway"),
    (500, b"", ""),
    (500, b"\x1b[31mred\x00alert\xff", "?[31mred?alert?"),
    (500, b"x" * 5000, "x" * (REASON_LIMIT - 3) + "..."),
])
def test_reason_text_is_the_first_line_printable_and_capped(status: int, body: bytes, reason: str) -> None:
    assert reason_text(status, body) == reason


def test_a_storage_class_shortfall_says_which_classes_were_confirmed(tmp_path: Path) -> None:
    with KeepServer([f"{tmp_path / 'a'}:default"], fsync=False) as server, \
            KeepClient([server.url], retries=0) as kc, pytest.raises(WriteError) as info:
        kc.put(b"foo", copies=1, storage_classes=["default", "archive"])
    message = str(info.value)
    assert "wanted 1 replicas in classes archive, default" in message
    assert "stored 1, classes confirmed: default=1" in message


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[dict[str, str], str]:
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "f").write_bytes(b"hi\n")
    env = private_env(tmp_path, KEEP_LOCAL_STORE=str(tmp_path / "store"))
    put = run_keep(env, "put", "--no-progress", str(tmp_path / "src"))
    assert put.returncode == 0, put.stderr
    return env, put.stdout.split()[0]


@pytest.mark.parametrize(("command", "path", "problem"), [
    ("get", "nonexistent", "no file or directory 'nonexistent'"),
    ("cat", "nonexistent", "no file or directory 'nonexistent'"),
    ("ls", "nonexistent", "no file or directory 'nonexistent'"),
    ("cat", "a", "'a' is a directory, not a file"),
])
def test_a_bad_dataset_path_names_the_dataset_and_the_path(dataset: tuple[dict[str, str], str], command: str,
                                                          path: str, problem: str) -> None:
    env, loc = dataset
    result = run_keep(env, command, f"{loc}/{path}")
    assert result.returncode == 1
    assert result.stderr == f"keep: error: dataset {loc}: {problem}\n"


def test_cat_names_the_dataset_of_the_target_that_failed(dataset: tuple[dict[str, str], str]) -> None:
    env, loc = dataset
    result = run_keep(env, "cat", f"{loc}/a/f", f"{loc}/a/zz")
    assert result.stdout == "hi\n" and result.stderr == f"keep: error: dataset {loc}: no file or directory 'a/zz'\n"


def test_a_local_file_error_is_still_reported_as_one(tmp_path: Path) -> None:
    result = run_keep(private_env(tmp_path, KEEP_LOCAL_STORE=str(tmp_path / "s")), "put", str(tmp_path / "absent"))
    assert result.returncode == 1 and "dataset" not in result.stderr and "absent" in result.stderr


def test_a_locator_size_with_a_leading_zero_says_so() -> None:
    with pytest.raises(LocatorError, match="size '03' has a leading zero"):
        Locator.parse("acbd18db4cc2f85cedef654fccc4a4d8+03")
    with pytest.raises(LocatorError, match="size 'x3' is not a decimal number"):
        Locator.parse("acbd18db4cc2f85cedef654fccc4a4d8+x3")


def test_keep_serve_listen_names_the_port_range(tmp_path: Path) -> None:
    result = run_keep(private_env(tmp_path), "serve", "--volume", str(tmp_path), "--listen", "127.0.0.1:70000")
    assert result.returncode == 1 and "PORT a number in 0-65535" in result.stderr
