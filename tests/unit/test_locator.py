"""Locators: the strict grammar, byte-exact round trips, and the permission-signature formula."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepstore.errors import KeepError, LocatorError
from keepstore.locator import (
    DEFAULT_SIGNING_TTL,
    EMPTY_BLOCK,
    MAX_BLOCK_SIZE,
    Locator,
    sign_locator,
    signature_for,
    verify_signature,
)
from keepstore.locator import md5 as fips_md5

UTC = dt.timezone.utc
FOO = "acbd18db4cc2f85cedef654fccc4a4d8"
KEY = "testkey0123456789"
TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
VECTOR = "12509e57ffc23274e389ae530c610c21a32bc2ec"
FAR_EXPIRY = dt.datetime.fromtimestamp(0x7FFFFFFF, tz=UTC)
BEFORE_FAR_EXPIRY = FAR_EXPIRY - dt.timedelta(days=1)

PROPS = settings(max_examples=300, deadline=None)

HEX = "0123456789abcdef"
HINT_TAIL = string.ascii_letters + string.digits + "@_-"

md5s = st.text(HEX, min_size=32, max_size=32)
sizes = st.one_of(st.integers(0, MAX_BLOCK_SIZE), st.sampled_from([0, 1, MAX_BLOCK_SIZE]))
hex40 = st.text(HEX, min_size=40, max_size=40)
hex8 = st.text(HEX, min_size=8, max_size=8)
cluster = st.text(string.ascii_lowercase + string.digits, min_size=5, max_size=5)
permission_hints = st.builds(lambda sig, exp: f"A{sig}@{exp}", hex40, hex8)
remote_hints = st.builds(lambda c, sig, exp: f"R{c}-{sig}@{exp}", cluster, hex40, hex8)
service_uuids = st.builds(lambda c, n: f"{c}-bi6l4-{n:015d}", cluster, st.integers(0, 10**15 - 1))
k_hints = st.one_of(st.builds("K@{}".format, cluster), st.builds("K@{}".format, service_uuids))
other_hints = st.builds(
    lambda letter, tail: letter + tail,
    st.sampled_from([c for c in string.ascii_uppercase if c not in "AR"]),
    st.text(HINT_TAIL, max_size=20),
)
hints = st.one_of(permission_hints, remote_hints, k_hints, other_hints)
valid_locators = st.builds(
    lambda md5, size, hs: "+".join([md5, str(size), *hs]), md5s, sizes, st.lists(hints, max_size=5)
)


# -- round trips -------------------------------------------------------------------------------


@PROPS
@given(md5=md5s, size=sizes, hs=st.lists(hints, max_size=5))
def test_parse_then_str_round_trips_byte_for_byte(md5: str, size: int, hs: list[str]) -> None:
    text = "+".join([md5, str(size), *hs])
    loc = Locator.parse(text)
    assert str(loc) == text
    assert (loc.md5, loc.size, loc.hints) == (md5, size, tuple(hs))
    assert Locator.parse(str(loc)) == loc
    assert Locator(loc.md5, loc.size, loc.hints) == loc


@pytest.mark.parametrize(
    "text",
    [
        EMPTY_BLOCK,
        f"{FOO}+3",
        f"{FOO}+3+Z",
        f"{FOO}+3+K@xyzzy",
        f"{FOO}+3+K@zzzzz-bi6l4-000000000000000",
        f"{FOO}+3+A{VECTOR}@7fffffff",
        f"{FOO}+3+Rzzzzz-{VECTOR}@7fffffff",
        f"{FOO}+3+Zfoo+A{VECTOR}@7fffffff+K@xyzzy+Q_-@9",
        f"{FOO}+{MAX_BLOCK_SIZE}",
    ],
)
def test_known_good_locators_round_trip(text: str) -> None:
    assert str(Locator.parse(text)) == text


def test_unknown_hints_are_kept_in_their_order() -> None:
    loc = Locator.parse(f"{FOO}+3+Zb+Ya+K@xyzzy+Xc")
    assert loc.hints == ("Zb", "Ya", "K@xyzzy", "Xc")


def test_parse_accepts_a_locator_and_ascii_bytes() -> None:
    loc = Locator.parse(f"{FOO}+3")
    assert Locator.parse(loc) is loc
    assert Locator.parse(f"{FOO}+3".encode()) == loc


def test_for_data_gives_md5_and_size_without_hints() -> None:
    assert str(Locator.for_data(b"foo")) == f"{FOO}+3"
    assert str(Locator.for_data("foo")) == f"{FOO}+3"
    assert str(Locator.for_data(b"")) == EMPTY_BLOCK


def test_for_data_over_64_mib_raises_locator_error() -> None:
    with pytest.raises(LocatorError, match="64 MiB"):
        Locator.for_data(bytes(MAX_BLOCK_SIZE + 1))


def test_locator_is_immutable_and_hashable() -> None:
    loc = Locator.parse(f"{FOO}+3+Zx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        loc.size = 4  # type: ignore[misc]
    assert {loc, Locator.parse(f"{FOO}+3+Zx")} == {loc}


# -- invalid text ------------------------------------------------------------------------------

hint_bodies = st.text(HINT_TAIL, max_size=10)
bad_hint = st.one_of(
    st.builds(lambda c, t: c + t, st.sampled_from(string.ascii_lowercase + string.digits + "@_-"), hint_bodies),
    st.builds(lambda c, a, b: f"{c}{a}*{b}", st.sampled_from("BCKZ"), hint_bodies, hint_bodies),
    st.builds(lambda c, a, b: f"{c}{a}{b}", st.sampled_from("BCKZ"), hint_bodies,
              st.sampled_from(["*", " ", ".", "/", "\n", "\u00e9", ":", "="])),
    st.just(""),
)
uppercase_md5 = md5s.filter(lambda m: any(c in "abcdef" for c in m)).map(str.upper)
wrong_length_md5 = st.text(HEX, min_size=0, max_size=64).filter(lambda m: len(m) != 32)


def _join(*parts: str) -> str:
    return "+".join(parts)


invalid_locators = st.one_of(
    md5s,  # no size
    st.builds(lambda m, h: _join(m, h), md5s, other_hints),  # hint where the size should be
    st.builds(lambda m, h, s: _join(m, h, str(s)), md5s, other_hints, sizes),  # hint before size
    st.builds(lambda m, s, t: _join(m, str(s), str(t)), md5s, sizes, sizes),  # two sizes
    st.builds(lambda m, s, h, t: _join(m, str(s), h, str(t)), md5s, sizes, other_hints, sizes),
    st.builds(lambda m, s, h: _join(m, str(s), h), md5s, sizes, bad_hint),  # lowercase, '*', empty
    st.builds(lambda m, s: _join(m, str(s)), uppercase_md5, sizes),
    st.builds(lambda m, s: _join(m, str(s)), wrong_length_md5, sizes),
    st.builds(lambda m, s: _join(m, f"-{s}"), md5s, sizes),  # negative size
    st.builds(lambda m, s: _join(m, f"0{s}"), md5s, sizes),  # leading zero: would not round-trip
    st.builds(lambda m, s: _join(m, str(s)), md5s, st.integers(MAX_BLOCK_SIZE + 1, 2**70)),
    st.builds(lambda loc: loc + "+", valid_locators),  # trailing '+'
    st.builds(lambda loc: "+" + loc, valid_locators),  # leading '+'
    st.builds(lambda loc, i: loc[:i] + "+" + loc[i:] if loc[i - 1] == "+" else loc + "++",
              valid_locators, st.integers(33, 34)),  # empty part
    st.builds(lambda loc, ws: loc + ws, valid_locators, st.sampled_from([" ", "\n", "\t", "\r\n"])),
    st.builds(lambda loc, ws: ws + loc, valid_locators, st.sampled_from([" ", "\n", "\t"])),
    st.builds(lambda m, s, bad: _join(m, str(s), bad), md5s, sizes, st.sampled_from([
        "A", "A" + "0" * 40, "A" + "0" * 40 + "@", "A" + "0" * 39 + "@7fffffff", "A" + "0" * 40 + "@7FFFFFFF",
        "A" + "G" * 40 + "@7fffffff", "R", "Rzzzzz", "Rzzzzz-" + "0" * 40, "RZZZZZ-" + "0" * 40 + "@7fffffff",
    ])),
)


@PROPS
@given(text=invalid_locators)
def test_invalid_locator_text_raises_locator_error_and_nothing_else(text: str) -> None:
    with pytest.raises(LocatorError) as info:
        Locator.parse(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeepError)
    assert str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "+",
        FOO,
        f"{FOO}+",
        f"{FOO}+3+",
        f"{FOO}++3",
        f"{FOO}+3++Z",
        f"{FOO}+Z+3",
        f"{FOO}+3+4",
        f"{FOO}+3+z",
        f"{FOO}+3+K*",
        f"{FOO.upper()}+3",
        f"{FOO}+-3",
        f"{FOO}+3.0",
        f"{FOO}+ 3",
        f"{FOO}+\u0663",  # a non-ASCII digit
        f"{FOO}+{MAX_BLOCK_SIZE + 1}",
        f"{FOO[:-1]}+3",
        f"{FOO}0+3",
    ],
)
def test_known_bad_locators_raise_locator_error(text: str) -> None:
    with pytest.raises(LocatorError):
        Locator.parse(text)


def test_locator_error_names_the_offending_text() -> None:
    with pytest.raises(LocatorError, match="not-a-locator"):
        Locator.parse("not-a-locator+3")


@pytest.mark.parametrize("value", [None, 3, 3.0, ["x"], b"\xff\xfe+3"])
def test_parse_of_a_non_text_value_raises_locator_error(value: object) -> None:
    with pytest.raises(LocatorError):
        Locator.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "md5, size, hs",
    [("x", 3, ()), (FOO.upper(), 3, ()), (FOO, -1, ()), (FOO, True, ()), (FOO, 3.0, ()),
     (FOO, MAX_BLOCK_SIZE + 1, ()), (FOO, 3, ("",)), (FOO, 3, ("z",)), (FOO, 3, ("A",))],
)
def test_constructor_validates_like_parse(md5: str, size: int, hs: tuple[str, ...]) -> None:
    with pytest.raises(LocatorError):
        Locator(md5, size, hs)


alphabet = HEX + "ABCDEFZKR+@_-*x9 \n"


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(), st.text(alphabet, max_size=120), valid_locators.map(lambda s: s[:-1]),
                      st.builds(lambda loc, junk, i: loc[:i] + junk + loc[i:], valid_locators,
                                st.text(alphabet, max_size=3), st.integers(0, 200))))
def test_any_text_parses_to_a_round_tripping_locator_or_raises_locator_error(text: str) -> None:
    try:
        loc = Locator.parse(text)
    except LocatorError:
        return
    assert str(loc) == text


# -- signatures --------------------------------------------------------------------------------


def test_signature_matches_the_protocol_test_vector() -> None:
    assert signature_for(FOO, TOKEN, "7fffffff", KEY, 0x127500) == VECTOR
    assert signature_for(FOO, TOKEN, "7fffffff", KEY.encode(), DEFAULT_SIGNING_TTL) == VECTOR
    assert DEFAULT_SIGNING_TTL == 1_209_600


def test_sign_locator_produces_the_test_vector_hint() -> None:
    signed = sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=0x7FFFFFFF)
    assert str(signed) == f"{FOO}+3+A{VECTOR}@7fffffff"
    assert sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=FAR_EXPIRY) == signed
    assert signed.signature == VECTOR


def test_signed_locator_verifies_for_its_token_and_key() -> None:
    signed = str(sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=FAR_EXPIRY))
    assert verify_signature(signed, key=KEY, token=TOKEN, now=BEFORE_FAR_EXPIRY) is True
    assert verify_signature(Locator.parse(signed), key=KEY, token=TOKEN, now=BEFORE_FAR_EXPIRY) is True


def test_keepstore_style_signed_locator_text_round_trips_and_verifies() -> None:
    text = f"{FOO}+3+A{VECTOR}@7fffffff"
    loc = Locator.parse(text)
    assert str(loc) == text
    assert verify_signature(loc, key=KEY, token=TOKEN, now=BEFORE_FAR_EXPIRY)


@pytest.mark.parametrize(
    "change",
    ["token", "key", "ttl", "md5", "expiry", "expired"],
)
def test_verify_fails_for_wrong_token_key_ttl_block_expiry_or_when_expired(change: str) -> None:
    signed = sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=FAR_EXPIRY)
    kwargs: dict = dict(key=KEY, token=TOKEN, now=BEFORE_FAR_EXPIRY)
    text = str(signed)
    if change == "token":
        kwargs["token"] = "v2/zzzzz-gj3su-000000000000000/secret124"
    elif change == "key":
        kwargs["key"] = "testkey0123456788"
    elif change == "ttl":
        kwargs["ttl"] = DEFAULT_SIGNING_TTL + 1
    elif change == "md5":
        text = text.replace(FOO, fips_md5(b"bar").hexdigest())
    elif change == "expiry":
        text = text.replace("@7fffffff", "@7ffffffe")
    else:
        kwargs["now"] = FAR_EXPIRY + dt.timedelta(seconds=1)
    assert verify_signature(text, **kwargs) is False


def test_unsigned_locator_does_not_verify() -> None:
    assert verify_signature(f"{FOO}+3", key=KEY, token=TOKEN) is False


def test_signature_expiring_exactly_now_is_expired() -> None:
    signed = sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=FAR_EXPIRY)
    assert verify_signature(signed, key=KEY, token=TOKEN, now=FAR_EXPIRY) is False
    assert signed.is_expired(FAR_EXPIRY) is True
    assert signed.is_expired(BEFORE_FAR_EXPIRY) is False


def test_default_expiry_is_now_plus_ttl() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=UTC)
    signed = sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, ttl=3600, now=now)
    assert signed.expires_at == now + dt.timedelta(hours=1)
    assert verify_signature(signed, key=KEY, token=TOKEN, ttl=3600, now=now)
    assert not verify_signature(signed, key=KEY, token=TOKEN, now=now)  # the ttl is signed too


def test_expiry_is_compared_in_utc_whatever_the_timezone_of_now() -> None:
    signed = sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=dt.datetime(2030, 1, 1, 12, tzinfo=UTC))
    tokyo = dt.timezone(dt.timedelta(hours=9))
    assert verify_signature(signed, key=KEY, token=TOKEN, now=dt.datetime(2030, 1, 1, 20, 59, tzinfo=tokyo))
    assert not verify_signature(signed, key=KEY, token=TOKEN, now=dt.datetime(2030, 1, 1, 21, 0, tzinfo=tokyo))


def test_naive_expiry_is_rejected() -> None:
    with pytest.raises(LocatorError, match="aware"):
        sign_locator(f"{FOO}+3", key=KEY, token=TOKEN, expires_at=dt.datetime(2030, 1, 1))


def test_resigning_replaces_the_old_signature_and_keeps_other_hints() -> None:
    first = sign_locator(f"{FOO}+3+K@xyzzy+Zq", key=KEY, token=TOKEN, expires_at=0x7FFFFFF0)
    second = sign_locator(first, key=KEY, token=TOKEN, expires_at=0x7FFFFFFF)
    assert [h for h in second.hints if h.startswith("A")] == [f"A{VECTOR}@7fffffff"]
    assert [h for h in second.hints if not h.startswith("A")] == ["K@xyzzy", "Zq"]


@PROPS
@given(md5=md5s, size=sizes, key=st.binary(min_size=1, max_size=64),
       token=st.text(string.ascii_letters + string.digits + "/-", min_size=1, max_size=60),
       expiry=st.integers(1, 0xFFFFFFFF), ttl=st.integers(1, 10**8))
def test_sign_then_verify_round_trips(md5: str, size: int, key: bytes, token: str, expiry: int, ttl: int) -> None:
    signed = sign_locator(Locator(md5, size), key=key, token=token, ttl=ttl, expires_at=expiry)
    assert Locator.parse(str(signed)) == signed
    just_before = dt.datetime.fromtimestamp(expiry - 1, tz=UTC)
    assert verify_signature(str(signed), key=key, token=token, ttl=ttl, now=just_before)
    assert not verify_signature(str(signed), key=key, token=token + "x", ttl=ttl, now=just_before)
    assert signed.expires_at == dt.datetime.fromtimestamp(expiry, tz=UTC)


def test_expires_at_is_an_aware_utc_datetime() -> None:
    loc = Locator.parse(f"{FOO}+3+A{VECTOR}@7fffffff")
    assert loc.expires_at == dt.datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC)
    assert loc.expires_at.tzinfo is not None
    assert loc.expires_at.utcoffset() == dt.timedelta(0)


def test_expires_at_falls_back_to_a_remote_signature_and_is_none_unsigned() -> None:
    assert Locator.parse(f"{FOO}+3+Rzzzzz-{VECTOR}@00000010").expires_at == dt.datetime.fromtimestamp(16, tz=UTC)
    assert Locator.parse(f"{FOO}+3+K@xyzzy").expires_at is None
    assert Locator.parse(f"{FOO}+3").signature is None


@PROPS
@given(md5=md5s, size=sizes, hs=st.lists(hints, max_size=6))
def test_stripped_drops_a_and_r_signatures_and_keeps_other_hints_in_order(md5: str, size: int, hs: list[str]) -> None:
    loc = Locator.parse("+".join([md5, str(size), *hs]))
    stripped = loc.stripped()
    assert stripped.hints == tuple(h for h in hs if h[0] not in "AR")
    assert (stripped.md5, stripped.size) == (md5, size)
    assert stripped.signature is None and stripped.expires_at is None


def test_service_hints_lists_k_hint_targets_in_order() -> None:
    loc = Locator.parse(f"{FOO}+3+K@xyzzy+Zq+K@zzzzz-bi6l4-000000000000001")
    assert loc.service_hints == ("xyzzy", "zzzzz-bi6l4-000000000000001")


def test_the_examples_in_docs_locators_md_run() -> None:
    import doctest
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "locators.md"
    result = doctest.testfile(str(path), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_is_empty_names_only_the_empty_block() -> None:
    assert Locator.parse("d41d8cd98f00b204e9800998ecf8427e+0").is_empty
    assert Locator.parse("d41d8cd98f00b204e9800998ecf8427e+0+Kzzzzz").is_empty
    assert not Locator.for_data(b"x").is_empty
    assert not Locator("d41d8cd98f00b204e9800998ecf8427e", 1).is_empty


def test_md5_helper_is_fips_safe_and_matches_hashlib(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Issue 22: every md5 passes usedforsecurity=False, which a FIPS-mode hashlib insists on."""
    from keepstore import locator

    real = hashlib.md5
    seen: list[object] = []

    def fips_md5(data: bytes = b"", **kw: object) -> object:
        seen.append(kw.get("usedforsecurity"))
        if kw.get("usedforsecurity") is not False:
            raise ValueError("[digital envelope routines] unsupported")  # what OpenSSL in FIPS mode says
        return real(data, usedforsecurity=False)

    monkeypatch.setattr(hashlib, "md5", fips_md5)
    assert locator.md5(b"foo").hexdigest() == "acbd18db4cc2f85cedef654fccc4a4d8"
    assert Locator.for_data(b"foo").md5 == "acbd18db4cc2f85cedef654fccc4a4d8"
    from keepstore.local import LocalStore

    store = LocalStore(tmp_path)  # writes and verified reads hash through the helper too
    assert store.get(store.put(b"fips")) == b"fips"
    assert len(seen) >= 4 and all(flag is False for flag in seen)
