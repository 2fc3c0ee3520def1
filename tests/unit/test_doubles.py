"""VerifierTransport and mock_client: their checks and messages, and the docs/testing.md example module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from keepstore import BlockNotFound, KeepClient, Locator
from keepstore.testing.doubles import KeepClientMock, VerifierTransport, expect, mock_client
from keepstore.transport import Response, TransportError

DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = "v2/zzzzz-gj3su-000000000000000/doublesSecret"
LOC = Locator.for_data(b"abc")


def _client(transport: VerifierTransport, **options: object) -> KeepClient:
    return KeepClient(services=["http://keep.example:25107"], token=TOKEN, transport=transport, retries=0,
                      **options)  # type: ignore[arg-type]


def test_steps_answer_requests_in_order() -> None:
    transport = VerifierTransport([expect("PUT", LOC), expect("GET", LOC, body=b"abc")])
    with _client(transport, copies=1) as kc:
        assert kc.put(b"abc").bare() == LOC
        assert kc.get(LOC) == b"abc"
    transport.assert_done()
    assert [r.method for r in transport.requests] == ["PUT", "GET"]


def test_an_extra_request_is_an_assertion_error_naming_it_but_not_the_token() -> None:
    transport = VerifierTransport([])
    with _client(transport) as kc, pytest.raises(AssertionError, match=r"unexpected request 1 \(HEAD .*9001509") as caught:
        kc.head(LOC)
    assert "doublesSecret" not in str(caught.value)
    with pytest.raises(AssertionError, match="unexpected request 1"):
        transport.assert_done()


def test_missing_requests_fail_assert_done() -> None:
    transport = VerifierTransport([expect("HEAD", LOC), expect("GET", LOC, body=b"abc")])
    with _client(transport) as kc:
        kc.head(LOC)
    with pytest.raises(AssertionError, match=r"1 expected request\(s\) never came .*2: expect\(GET"):
        transport.assert_done()


def test_a_failed_check_names_the_step_and_survives_being_swallowed() -> None:
    transport = VerifierTransport([expect("GET", LOC)])
    with _client(transport) as kc:
        try:
            kc.head(LOC)
        except AssertionError:
            pass  # code under test that swallows everything
    with pytest.raises(AssertionError, match=r"failed step expect.*expected GET, got HEAD"):
        transport.assert_done()


def test_a_step_raising_transport_error_simulates_the_network() -> None:
    def refuse(request: object) -> Response:
        raise TransportError("connection refused", connect=True)

    transport = VerifierTransport([refuse])
    with _client(transport) as kc, pytest.raises(Exception, match="connection refused"):
        kc.get(LOC)
    transport.assert_done()


def test_a_step_returning_something_else_is_reported() -> None:
    transport = VerifierTransport([lambda request: b"not a response"])  # type: ignore[list-item, return-value]
    with _client(transport) as kc, pytest.raises(AssertionError, match="not a Response"):
        kc.get(LOC)


def test_mock_client_rejects_unknown_methods_and_arguments() -> None:
    kc = mock_client()
    with pytest.raises(AttributeError):
        kc.gett(LOC)
    with pytest.raises(TypeError):
        kc.get(LOC, request="x")
    with pytest.raises(TypeError):
        kc.put_async(b"x", b"y")
    assert kc.copies == 2 and mock_client(copies=1).copies == 1
    assert KeepClientMock is mock_client


def test_mock_client_with_blocks_behaves_like_a_small_keep() -> None:
    blocks: dict[str, bytes] = {}
    with mock_client(blocks=blocks) as kc:
        loc = kc.put(b"abc")
        assert blocks == {str(LOC): b"abc"}
        assert kc.get(str(loc)) == b"abc" and kc.head(loc) and kc.exists(loc)
        assert kc.get_async(loc).result() == b"abc"
        assert kc.put_async(b"def").result() == Locator.for_data(b"def")
        missing = Locator.for_data(b"missing")
        assert isinstance(kc.get_async(missing).exception(), BlockNotFound)
        assert kc.exists_many([loc, missing]) == [True, False]
        assert kc.get_many([loc]) == [b"abc"]
        with pytest.raises(BlockNotFound):
            kc.get(missing)
    kc.put.assert_called_once_with(b"abc")


def test_the_docs_example_module_passes(tmp_path: Path) -> None:
    text = (DOCS / "testing.md").read_text()
    blocks = re.findall(r"```python\n(# test_my_archive\.py\n.*?)```", text, re.S)
    assert len(blocks) == 1
    (tmp_path / "test_my_archive.py").write_text(blocks[0])
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed" in out.stdout
