"""Fuzzing with hypothesis: the locator, manifest and config parsers raise only their documented
errors, and keep serve answers any bytes on a socket with sane HTTP (or a close), never a 500,
never a hang, and stays up."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepstore.config import Settings
from keepstore.datasets.manifest import Manifest, ManifestError
from keepstore.errors import ConfigError, LocatorError
from keepstore.locator import Locator
from keepstore.server import KeepServer
from keepstore.testing import wait_until

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
md5s = st.text("0123456789abcdef", min_size=32, max_size=32)
_PIECES = ["d41d8cd98f00b204e9800998ecf8427e", "acbd18db4cc2f85cedef654fccc4a4d8", "+", "+0", "+3", "+67108864",
           "+67108865", "+A" + "a" * 40 + "@7fffffff", "+K@zzzzz", "+R", "+Z", "+a", "+-1", "+*", "@", "\x00", "é",
           "0", "99999999999999999999999", "9" * 5000, "\u00b2", " ", "\n"]
locatorish = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)


# -- locators ---------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=100), locatorish.map(str.encode)))
def test_locator_parse_of_bytes_round_trips_or_raises_locator_error(raw: bytes) -> None:
    try:
        loc = Locator.parse(raw)
    except LocatorError as exc:
        assert str(exc)
        return
    assert str(loc).encode() == raw


@FUZZ
@given(locatorish)
def test_locator_parse_of_assembled_text_round_trips_or_raises_locator_error(text: str) -> None:
    try:
        loc = Locator.parse(text)
    except LocatorError:
        return
    assert str(loc) == text and Locator.parse(str(loc)) == loc


# -- manifests --------------------------------------------------------------------------------

_NAMES = [".", "./a", "./a\\040b", "./dir/sub", "./..", "./a//b", "./\\000", "./\\134", "x", "./é", "./a\\"]
_BLOCKS = ["acbd18db4cc2f85cedef654fccc4a4d8+3", "d41d8cd98f00b204e9800998ecf8427e+0",
           "37b51d194a7513e45b56f6524f2d51f2+3+A" + "b" * 40 + "@7fffffff", "acbd18db4cc2f85cedef654fccc4a4d8+x",
           "acbd18db4cc2f85cedef654fccc4a4d8"]
_SEGMENTS = st.builds(lambda p, n, name: f"{p}:{n}:{name}", st.integers(0, 8), st.integers(0, 8),
                      st.sampled_from(["f", "f.txt", "d/f", ".", "d/.", "a\\040b", "..", "", "/abs", "x\\"]))
stream_lines = st.builds(
    lambda name, blocks, segs: " ".join([name, *blocks, *segs]),
    st.sampled_from(_NAMES), st.lists(st.sampled_from(_BLOCKS), max_size=3), st.lists(_SEGMENTS, max_size=4))
manifests = st.one_of(
    st.lists(stream_lines, max_size=4).map(lambda lines: "".join(line + "\n" for line in lines)),
    st.lists(stream_lines, min_size=1, max_size=3).map("\n".join),  # no final newline
    st.text(max_size=200),
)


@FUZZ
@given(manifests)
def test_manifest_parse_succeeds_consistently_or_raises_manifest_error(text: str) -> None:
    try:
        manifest = Manifest.parse(text)
    except ManifestError as exc:
        assert str(exc)
        return
    again = Manifest.parse(manifest.normalized_text())
    assert {p: f.size for p, f in again.files.items()} == {p: f.size for p, f in manifest.files.items()}
    assert manifest.total_size == sum(f.size for f in manifest.files.values())
    for directory in ["", *manifest.directories]:
        manifest.listdir(directory)
    manifest.portable_data_hash()


@FUZZ
@given(st.binary(max_size=200))
def test_manifest_parse_of_bytes_raises_only_manifest_error(raw: bytes) -> None:
    try:
        Manifest.parse(raw)
    except ManifestError:
        pass


# -- configuration ----------------------------------------------------------------------------

SECRET = "v2/zzzzz-gj3su-0123456789abcde/fuzzSecretValue123"
_KEYS = ["services", "token", "local_store", "cache_dir", "cache_max_bytes", "copies", "retries", "threads",
         "timeout", "ca_file", "insecure", "api_host", "bogus"]
_VALUES = ["1", "0", "-1", "9" * 5000, "[" * 300 + "]" * 300, "true", "no", "~", "[]", "{}", "[http://127.0.0.1:1/]", "http://127.0.0.1:1/",
           "ftp://x", "'a b'", "{connect: 1, read: 2}", "{connect: -1}", "{bogus: 1}", "1e999", "!!binary AA==",
           "&a [*a]", "*x", "|\n  text", "'" + SECRET + "'", "\"\\x00\"", "[1, [2, [3]]]"]
yaml_lines = st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(_KEYS), st.sampled_from(_VALUES))
config_texts = st.one_of(st.lists(yaml_lines, max_size=5).map("\n".join), st.text(max_size=120),
                         st.sampled_from(["- a\n- b", "!!python/object:os.system x", "{", "\t- x", ": :"]))
env_values = st.one_of(st.sampled_from(["", " ", "1", "yes", "maybe", "http://127.0.0.1:1/ ftp://x", SECRET,
                                        "http://127.0.0.1:1/" + SECRET]), st.text(max_size=30))
environs = st.dictionaries(st.sampled_from(["KEEP_SERVICES", "ARVADOS_KEEP_SERVICES", "ARVADOS_KEEP_PROXY",
                                            "ARVADOS_API_HOST_INSECURE", "KEEP_LOCAL_STORE", "ARVADOS_API_HOST",
                                            "KEEP_CACHE_DIR"]), env_values, max_size=4)


@settings(max_examples=300, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(text=config_texts, environ=environs)
def test_settings_from_env_gives_settings_or_config_error_without_the_token(text: str, environ: dict[str, str],
                                                                           tmp_path_factory: pytest.TempPathFactory,
                                                                           ) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    env = {**environ, "KEEP_TOKEN": SECRET, "KEEP_CONFIG": str(path), "HOME": str(path.parent)}
    try:
        result = Settings.from_env(env)
    except ConfigError as exc:
        assert "fuzzSecretValue123" not in str(exc)
        assert exc.__cause__ is None or "fuzzSecretValue123" not in str(exc.__cause__)
        return
    assert isinstance(result, Settings)
    assert "fuzzSecretValue123" not in repr(result)  # wherever the token went, the repr masks it


# -- the server's request parsing -------------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeepServer, _Errors]]:
    errors = _Errors()
    logger = logging.getLogger("keepstore.server")
    logger.addHandler(errors)
    server = KeepServer([tmp_path_factory.mktemp("fuzz-volume")], idle_timeout=1.0, fsync=False,
                        system_token="fuzz-system-token", signing_key="fuzz-key").start()
    try:
        yield server, errors
    finally:
        server.stop(grace=2)
        logger.removeHandler(errors)


_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "BREW", "get", "", "G ET", "PUT\x00", "\u00e9"]
_PATHS = ["/", "/index", "/index/", "/index/acb", "/index/zz", "/acbd18db4cc2f85cedef654fccc4a4d8",
          "/acbd18db4cc2f85cedef654fccc4a4d8+3", "/acbd18db4cc2f85cedef654fccc4a4d8+3+A" + "0" * 40 + "@00000000",
          "/d41d8cd98f00b204e9800998ecf8427e+0", "/acbd18db4cc2f85cedef654fccc4a4d8+67108865", "/../../etc/passwd",
          "//", "*", "http://127.0.0.1/x", "/%00", "/acbd18db4cc2f85cedef654fccc4a4d8?x=1#f", "/" + "a" * 3000,
          "/acbd18db4cc2f85cedef654fccc4a4d8+" + "9" * 5000]
_VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "HTTP/", "http/1.1", "HTTP/1.10000000000"]
_HEADER_NAMES = ["Content-Length", "Authorization", "Expect", "Transfer-Encoding", "Connection",
                 "X-Keep-Desired-Replicas", "X-Keep-Storage-Classes", "X-Keep-Signature", "X-Request-Id", "Host",
                 "Bad Name", "", ":"]
_HEADER_VALUES = ["0", "3", "-1", "10", "\u00b2", "1\u00b9", "9" * 5000, "0" * 30 + "3", "67108865", "99999999999999999999", "abc", "", "100-continue", "chunked",
                  "close", "keep-alive", "Bearer fuzz-system-token", "OAuth2 x", "Bearer ", "local, 2020-01-01",
                  "a, , b", "req-aaaaaaaaaaaaaaaaaaaa", "\u00e9", " folded\r\n continued"]
headers = st.lists(st.tuples(st.one_of(st.sampled_from(_HEADER_NAMES), st.text(max_size=10)),
                             st.one_of(st.sampled_from(_HEADER_VALUES), st.text(max_size=20))), max_size=6)
requests = st.one_of(
    st.builds(
        lambda m, p, v, hs, body: (f"{m} {p} {v}\r\n" + "".join(f"{k}: {val}\r\n" for k, val in hs)
                                   + "\r\n").encode("utf-8", "surrogatepass") + body,
        st.one_of(st.sampled_from(_METHODS), st.text(max_size=8)), st.one_of(st.sampled_from(_PATHS), st.text(max_size=30)),
        st.sampled_from(_VERSIONS), headers, st.binary(max_size=64)),
    st.binary(max_size=300),
)
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])[ \r]")


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server already answered and closed: read what it said
            pass
        chunks = []
        deadline = time.monotonic() + 5
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            assert time.monotonic() < deadline, "the server kept the connection open"
        return b"".join(chunks)


def _check_responses(data: bytes, raw: bytes) -> None:
    """The first response: a status line (never 500), headers, and Content-Length bytes of body;
    whatever follows (answers to pipelined garbage) starts with a status line too."""
    if not data:
        return  # closed without an answer (e.g. the body ended early): allowed
    match = _STATUS.match(data)
    assert match, data[:200]
    assert match.group(1) != b"500", data[:300]
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data[:300]
    lengths = re.findall(rb"\r\nContent-Length: *([0-9]+)", head, re.IGNORECASE)
    assert lengths, head
    length = int(lengths[0])
    # A HEAD answer has no body, except the stdlib's errors for request lines it could not
    # parse (then it does not know the method was HEAD): accept either reading.
    for body_len in ([0, length] if raw.startswith(b"HEAD ") else [length]):
        after = rest[body_len:] if len(rest) >= body_len else None
        if after is not None and (not after or _STATUS.match(after)):
            break
    else:
        raise AssertionError(f"bad framing after {head!r}: {rest[:200]!r}")
    second = _STATUS.match(after)
    assert second is None or second.group(1) != b"500", after[:300]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=requests)
def test_server_answers_any_request_sanely_and_stays_up(fuzz_server: tuple[KeepServer, _Errors],
                                                       raw: bytes) -> None:
    server, errors = fuzz_server
    data = _exchange(server.port, raw)  # fails if the server keeps the connection open past 5 s
    _check_responses(data, raw)
    assert not errors.records, [r.getMessage() for r in errors.records]
    # Still up, and every admission slot came back.
    assert _exchange(server.port, b"GET /d41d8cd98f00b204e9800998ecf8427e+0 HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 200")
    wait_until(lambda: server.in_flight == 0, what="every admission slot's return")


@pytest.mark.parametrize("raw", [b"\x00", b"garbage\r\n\r\n", b"GET\r\n\r\n", b"BREW /pot\r\n\r\n"])
def test_unparseable_request_line_is_answered_with_a_status_line(fuzz_server: tuple[KeepServer, _Errors],
                                                                 raw: bytes) -> None:
    """Regression (found by the fuzzer): with the stdlib's default request version "HTTP/0.9",
    such lines got a bare HTML error page without a status line or headers."""
    server, _ = fuzz_server
    assert re.match(rb"HTTP/1\.[01] 400 ", _exchange(server.port, raw))


HUGE = "9" * 5000


def test_locator_with_a_size_of_thousands_of_digits_raises_locator_error() -> None:
    """Regression: int() refuses over 4300 digits, and that plain ValueError escaped parse()."""
    with pytest.raises(LocatorError):
        Locator.parse("acbd18db4cc2f85cedef654fccc4a4d8+" + HUGE)


def test_manifest_with_a_segment_of_thousands_of_digits_raises_manifest_error() -> None:
    """Regression: the same ValueError escaped Manifest.parse() from a pos:len:name segment."""
    with pytest.raises(ManifestError):
        Manifest.parse(f". acbd18db4cc2f85cedef654fccc4a4d8+3 0:{HUGE}:f\n")
    with pytest.raises(ManifestError):
        Manifest.parse(f". acbd18db4cc2f85cedef654fccc4a4d8+{HUGE} 0:3:f\n")


def test_serve_listen_port_in_other_digits_is_a_config_error() -> None:
    from keepstore.cli.serve import parse_listen

    with pytest.raises(ConfigError):
        parse_listen("127.0.0.1:\u00b2")


@pytest.mark.parametrize("raw", [
    b"PUT /acbd18db4cc2f85cedef654fccc4a4d8 HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
    b"PUT /acbd18db4cc2f85cedef654fccc4a4d8 HTTP/1.1\r\nHost: x\r\nContent-Length: " + HUGE.encode() + b"\r\n\r\n",
    b"PUT /acbd18db4cc2f85cedef654fccc4a4d8+" + HUGE.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nfoo",
    b"GET /acbd18db4cc2f85cedef654fccc4a4d8+" + HUGE.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: \xb9\r\n\r\n",
], ids=["superscript-length", "huge-length", "huge-locator-size-put", "huge-locator-size-get", "superscript-get"])
def test_odd_digits_get_a_4xx_not_a_500(fuzz_server: tuple[KeepServer, _Errors], raw: bytes) -> None:
    """Regression (found by fuzzing): "²".isdigit() is true but int("²") fails, and int() refuses
    over 4300 digits; both became a 500 with a logged traceback."""
    server, errors = fuzz_server
    answer = _exchange(server.port, raw)
    assert re.match(rb"HTTP/1\.[01] 4[0-9][0-9] ", answer), answer[:100]
    assert not errors.records


@pytest.mark.parametrize("text, problem", [
    ("copies: " + "9" * 5000 + "\n", "too long"),
    ("copies: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
], ids=["5000-digit-integer", "20000-deep-list"])
def test_config_file_that_yaml_cannot_hold_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    """Regression: ruamel raised a plain ValueError (int() of over 4300 digits) or a
    RecursionError, which escaped Settings.from_env instead of a ConfigError."""
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env({"KEEP_CONFIG": str(path)})


@pytest.mark.parametrize("name", ["a\u00a0b", "em\u2003space", "ideographic\u3000space", "line\u2028sep", "x\x85y"])
def test_manifest_with_unicode_space_in_a_name_round_trips(name: str) -> None:
    """Regression (found by hypothesis in test_manifest): the segment pattern used \\S, so a file
    name with NBSP or another Unicode space, which escape_name leaves as it is, made our own
    manifest unparseable. (The Go SDK reads such names; the Arvados Python SDK, which splits on
    \\s, does not.)"""
    from keepstore.datasets.manifest import Segment

    loc = Locator.for_data(b"abc")
    manifest = Manifest.from_files({name: [Segment(loc, 0, 3)], f"dir{name}/f": [Segment(loc, 0, 3)]})
    again = Manifest.parse(manifest.text)
    assert sorted(again.files) == sorted([name, f"dir{name}/f"])
