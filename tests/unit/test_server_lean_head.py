"""read_head, keep serve's lean request reader: what it takes the standard library parses the
same way, what it refuses goes to that parser, and no head makes it backtrack for long."""

from __future__ import annotations

import email.message
import http.client
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from keepstore.server.wire import MAX_HEAD, read_head

TOKEN = st.text("!#$%&'*+-.^_`|~" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=12)
# mostly what a value may hold, now and then what it may not (NUL, DEL, CR, LF, non-ASCII)
VALUE = st.text(st.sampled_from([" ", " ", "\t", "a", "b", "Z", "0", "9", ":", "/", "~", "-", "=", ";",
                                 "\x00", "\x7f", "é", "\r", "\n"]), max_size=20)
PATH = st.text(st.sampled_from(["/", "a", "+", "0", "%", "?", "=", " ", "é"]), max_size=16).map(lambda p: "/" + p)


def stdlib(head: bytes) -> email.message.Message:
    """The standard library's reading of the field lines (what http.server uses)."""
    fp = io.BytesIO(head.split(b"\r\n", 1)[1])
    return http.client.parse_headers(fp)


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "BREW"]), path=PATH,
       fields=st.lists(st.tuples(TOKEN, VALUE), max_size=6))
def test_a_head_it_takes_the_standard_library_reads_the_same(method: str, path: str,
                                                            fields: list[tuple[str, str]]) -> None:
    text = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    head = text.encode("latin-1", "replace")
    lean = read_head(head + b"body")
    if lean is None:
        return
    assert lean.length == len(head)
    assert (lean.command, lean.path) == (method, path)
    parsed = stdlib(head)
    for name, _ in fields:
        assert lean.headers.get_all(name) == parsed.get_all(name), (name, head)


def test_plain_heads_are_taken_and_odd_ones_refused() -> None:
    got = read_head(b"GET /abc HTTP/1.1\r\nHost: x\r\nX-A:  v  w \r\nEmpty:\r\nx-a: 2\r\n\r\n")
    assert got is not None and got.headers.get_all("X-A") == ["v  w ", "2"] and got.headers.get("empty") == ""
    for head in (b"GET /a HTTP/1.0\r\n\r\n", b"GET //a HTTP/1.1\r\n\r\n", b"GET http://h/a HTTP/1.1\r\n\r\n",
                 b"GET /a HTTP/1.1\r\nX: a\r\n b\r\n\r\n", b"GET /a HTTP/1.1\r\nX : a\r\n\r\n",
                 b"GET /a HTTP/1.1\r\nX: a\rb\r\n\r\n", b"GET /a HTTP/1.1\r\nX: a\nY: b\r\n\r\n",
                 b"GET /a HTTP/1.1\r\nX: \x00\r\n\r\n", b"GET /a HTTP/1.1\r\nHost: x\r\n",
                 b"GET /a HTTP/1.1\r\n" + b"X: 1\r\n" * 101 + b"\r\n"):
        assert read_head(head) is None, head


def test_a_field_of_spaces_ending_in_a_nul_is_refused() -> None:
    # The head that once made the field pattern try every split of the spaces (13 s in keep
    # serve); how long it takes now is test_server_fast's wall-clock test.
    head = b"GET /a HTTP/1.1\r\nHost: x\r\nA:" + b" " * (MAX_HEAD - 100) + b"\x00\r\n\r\n"
    assert read_head(head) is None
    assert read_head(head.replace(b"\x00", b"v")).headers.get("a") == "v"  # type: ignore[union-attr]
