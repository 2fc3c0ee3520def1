"""The error hierarchy: useful messages, picklable with attributes, never a token."""

from __future__ import annotations

import pickle

import pytest

import keepstore
from keepstore import errors
from keepstore.errors import (
    BlockNotFound,
    CacheError,
    ConfigError,
    KeepError,
    LocatorError,
    NoServicesError,
    ReadError,
    WriteError,
    redact,
)

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123abc"
ALL = [KeepError, LocatorError, ConfigError, NoServicesError, ReadError, BlockNotFound, WriteError, CacheError]


def test_all_is_sorted_and_exported_by_the_package() -> None:
    assert errors.__all__ == sorted(errors.__all__)
    for name in errors.__all__:
        if name != "redact":
            assert getattr(keepstore, name) is getattr(errors, name)


@pytest.mark.parametrize("cls", ALL)
def test_every_error_has_a_non_empty_str_even_without_a_message(cls: type[KeepError]) -> None:
    assert str(cls()) == cls.__name__
    assert str(cls("")) == cls.__name__
    assert str(cls("block abc is gone")) == "block abc is gone"


@pytest.mark.parametrize("cls", ALL)
def test_every_error_pickles_with_its_type_and_message(cls: type[KeepError]) -> None:
    exc = cls("something went wrong")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == "something went wrong"


@pytest.mark.parametrize("cls", [ReadError, BlockNotFound])
def test_read_errors_pickle_with_their_attributes(cls: type[ReadError]) -> None:
    exc = cls("no such block", locator="acbd18db4cc2f85cedef654fccc4a4d8+3", request_id="req-abc",
              attempts={"http://127.0.0.1:1/": "404"})
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert (back.locator, back.request_id, back.attempts) == (exc.locator, "req-abc", {"http://127.0.0.1:1/": "404"})
    assert str(back) == "[req-abc] no such block"  # the base formats the request id


def test_write_error_pickles_with_wanted_done_and_attempts() -> None:
    exc = WriteError("stored 1 of 2", wanted=2, done=1, locator="acbd18db4cc2f85cedef654fccc4a4d8+3",
                     request_id="req-xyz", attempts={"http://127.0.0.1:1/": "507 full", "http://127.0.0.1:2/": "ok"})
    back = pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
    assert type(back) is WriteError
    assert (back.wanted, back.done) == (2, 1)
    assert back.attempts == exc.attempts
    assert (back.locator, back.request_id) == (exc.locator, exc.request_id)
    assert str(back) == "[req-xyz] stored 1 of 2"


def test_attempts_are_copied_not_shared() -> None:
    attempts = {"http://127.0.0.1:1/": "500"}
    exc = ReadError("x", attempts=attempts)
    attempts["http://127.0.0.1:2/"] = "later"
    assert exc.attempts == {"http://127.0.0.1:1/": "500"}


def test_hierarchy_matches_the_design() -> None:
    assert issubclass(LocatorError, KeepError) and issubclass(LocatorError, ValueError)
    assert issubclass(ConfigError, KeepError) and issubclass(ConfigError, ValueError)
    assert issubclass(BlockNotFound, ReadError) and issubclass(ReadError, KeepError)
    for cls in (NoServicesError, WriteError, CacheError):
        assert issubclass(cls, KeepError)
    assert not issubclass(ReadError, ValueError) and not issubclass(WriteError, ReadError)
    assert issubclass(KeepError, Exception) and not issubclass(KeepError, ValueError)


def test_locator_error_is_caught_as_value_error() -> None:
    with pytest.raises(ValueError):
        keepstore.Locator.parse("nope")


def test_redact_removes_v2_tokens_bearer_values_and_given_secrets() -> None:
    text = f"GET failed for {TOKEN}; Authorization: Bearer plainsecret; OAuth2 other; key=hunter2"
    out = redact(text, "hunter2", None, "")
    assert TOKEN not in out and "secret123abc" not in out
    assert "plainsecret" not in out and "other" not in out and "hunter2" not in out
    assert "GET failed for ***" in out and "Bearer ***" in out


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "block acbd18db4cc2f85cedef654fccc4a4d8+3 not found on http://127.0.0.1:25107/"
    assert redact(text) == text


@pytest.mark.parametrize("cls", ALL)
def test_a_token_in_a_message_is_redacted(cls: type[KeepError]) -> None:
    exc = cls(f"request with {TOKEN} failed; Authorization: Bearer abc123 sent")
    assert "secret123abc" not in str(exc) and "abc123" not in str(exc)
    assert "secret123abc" not in repr(exc)
    assert "secret123abc" not in str(pickle.loads(pickle.dumps(exc)))


def test_a_token_in_attempts_is_redacted() -> None:
    exc = WriteError("x", attempts={"http://127.0.0.1:1/": f"403 for {TOKEN}"})
    assert "secret123abc" not in repr(exc.attempts)


def test_prose_about_bearer_tokens_is_not_mangled() -> None:
    assert str(KeepError("the server wants a Bearer token")) == "the server wants a Bearer token"


@pytest.mark.parametrize("secret", ["t", "e", "abc", "tok"])
def test_redact_masks_a_short_secret_only_where_it_stands_as_a_value(secret: str) -> None:
    """Regression (issue 22): with KEEP_TOKEN=t every "t" became *** ("environmen*** KEEP_SERVICES")."""
    text = f"environment KEEP_SERVICES: 'ftp://h/' is not an http:// service URL; token={secret}; [{secret}]"
    out = redact(text, secret)
    assert out.startswith("environment KEEP_SERVICES: 'ftp://h/' is not an http:// service URL")
    assert out.endswith("token=***; [***]")


def test_redact_masks_a_long_secret_even_inside_other_text() -> None:
    secret = "plainsecret7f3a9cQQ"
    out = redact(f"http://h:1/x{secret}y and v2/zzzzz-gj3su-000000000000000/{secret}", f"v2/a/{secret}")
    assert secret not in out and out.startswith("http://h:1/x***y")


@pytest.mark.parametrize("cls", ALL)
def test_the_error_base_formats_the_request_id_once(cls: type[KeepError]) -> None:
    err = cls("block gone", request_id="req-0123456789abcdefghij")
    assert str(err) == "[req-0123456789abcdefghij] block gone"
    assert err.request_id == "req-0123456789abcdefghij"
    # A caller that still writes the prefix itself does not get it twice.
    assert str(cls("[req-0123456789abcdefghij] block gone", request_id="req-0123456789abcdefghij")) == str(err)
    assert str(cls("no id")) == "no id" and cls("no id").request_id is None
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.request_id) == (str(err), err.request_id)
