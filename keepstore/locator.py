"""Block locators (``<md5>+<size>[+hints]``) and the Keep permission-signature formula."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
from typing import Union

from .errors import LocatorError

__all__ = [
    "DEFAULT_SIGNING_TTL",
    "EMPTY_BLOCK",
    "MAX_BLOCK_SIZE",
    "Locator",
    "LocatorLike",
    "md5",
    "sign_locator",
    "signature_for",
    "verify_signature",
]

MAX_BLOCK_SIZE = 64 * 1024 * 1024
DEFAULT_SIGNING_TTL = 1_209_600  # two weeks, the Arvados default BlobSigningTTL
EMPTY_BLOCK = "d41d8cd98f00b204e9800998ecf8427e+0"

_MD5 = re.compile(r"[0-9a-f]{32}\Z")
_SIZE = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_HINT = re.compile(r"[A-Z][A-Za-z0-9@_-]*\Z")
_PERMISSION = re.compile(r"A([0-9a-f]{40})@([0-9a-f]{8})\Z")
_REMOTE = re.compile(r"R([a-z0-9]{5})-([0-9a-f]{40})@([0-9a-f]{8})\Z")


def md5(data: bytes | bytearray | memoryview = b"") -> "hashlib._Hash":
    """A new md5 hash object of *data*, for block names only (``usedforsecurity=False``).

    Keep names blocks by md5 as a checksum, not for security, so keepstore works on FIPS-mode
    hosts where a plain ``hashlib.md5()`` is refused. Every md5 in keepstore goes through here.
    """
    return hashlib.md5(data, usedforsecurity=False)


def _epoch(hexstamp: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(hexstamp, 16), tz=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Locator:
    """An immutable block locator; ``str()`` gives back exactly the text it was parsed from.

    Build one with `Locator.parse` (text), `Locator.for_data` (bytes) or the constructor, which
    checks its arguments as `parse` does and raises `LocatorError` naming what is wrong.

    Args:
        md5: The block's md5, 32 lowercase hex digits.
        size: The block's size in bytes, at most 64 MiB.
        hints: Each hint without its leading ``+``, in their original order.
    """

    md5: str
    size: int
    hints: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True for the empty block (``d41d8cd98f00b204e9800998ecf8427e+0``), which every store holds."""
        return self.size == 0 and self.md5 == EMPTY_BLOCK[:32]

    def __post_init__(self) -> None:
        if not isinstance(self.md5, str) or not _MD5.match(self.md5):
            raise LocatorError(f"invalid md5 {self.md5!r}: need 32 lowercase hex digits")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise LocatorError(f"invalid block size {self.size!r}: need a non-negative integer")
        if self.size > MAX_BLOCK_SIZE:
            raise LocatorError(f"block size {self.size} exceeds the 64 MiB maximum ({MAX_BLOCK_SIZE})")
        object.__setattr__(self, "hints", tuple(self.hints))
        for hint in self.hints:
            _check_hint(hint, f"{self.md5}+{self.size}")

    @classmethod
    def parse(cls, text: "LocatorLike | bytes") -> "Locator":
        """Parse locator text; raise `LocatorError` naming the text when it is not valid."""
        if isinstance(text, Locator):
            return text
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise LocatorError(f"invalid locator {text!r}: not ASCII") from None
        if not isinstance(text, str):
            raise LocatorError(f"expected locator text, got {type(text).__name__}")
        parts = text.split("+")
        if len(parts) < 2:
            raise LocatorError(f"invalid locator {text!r}: missing +size")
        md5, size, *hints = parts
        if not _MD5.match(md5):
            raise LocatorError(f"invalid locator {text!r}: md5 must be 32 lowercase hex digits")
        if not _SIZE.match(size):
            why = ("has a leading zero (write it as a plain decimal number)" if re.fullmatch(r"0[0-9]+", size)
                   else "is not a decimal number")
            raise LocatorError(f"invalid locator {text!r}: size {size!r} {why}")
        # Compare lengths first: int() refuses strings of over 4300 digits with a plain ValueError.
        if len(size) > len(str(MAX_BLOCK_SIZE)) or int(size) > MAX_BLOCK_SIZE:
            raise LocatorError(f"invalid locator {text!r}: size exceeds the 64 MiB maximum")
        for hint in hints:
            _check_hint(hint, text)
        return cls._checked(md5, int(size), tuple(hints))

    @classmethod
    def _checked(cls, md5: str, size: int, hints: tuple[str, ...]) -> "Locator":
        """A locator of fields already checked (by `parse`, or taken from a valid locator),
        without checking them again in ``__post_init__``: one is made for every read and write."""
        loc = object.__new__(cls)
        object.__setattr__(loc, "md5", md5)
        object.__setattr__(loc, "size", size)
        object.__setattr__(loc, "hints", hints)
        return loc

    @classmethod
    def for_data(cls, data: bytes | bytearray | memoryview | str) -> "Locator":
        """The hint-less locator of *data* (``str`` is encoded as UTF-8)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        view = memoryview(data).cast("B")
        if view.nbytes > MAX_BLOCK_SIZE:
            raise LocatorError(f"block of {view.nbytes} bytes exceeds the 64 MiB maximum ({MAX_BLOCK_SIZE})")
        return cls(md5(view).hexdigest(), view.nbytes)

    def __str__(self) -> str:
        return "+".join((self.md5, str(self.size), *self.hints))

    @property
    def permission_hint(self) -> str | None:
        """The first ``A<sig>@<expiry>`` hint, or None."""
        return next((h for h in self.hints if h.startswith("A")), None)

    @property
    def signature(self) -> str | None:
        """The 40-hex permission signature, or None when the locator is unsigned."""
        hint = self.permission_hint
        return hint[1:41] if hint else None

    @property
    def expires_at(self) -> dt.datetime | None:
        """When the permission signature (or else the first remote signature) expires, in UTC."""
        hint = self.permission_hint
        if hint:
            return _epoch(hint[42:])
        remote = next((h for h in self.hints if h.startswith("R")), None)
        return _epoch(remote.rsplit("@", 1)[1]) if remote else None

    @property
    def service_hints(self) -> tuple[str, ...]:
        """The targets of ``+K@`` hints (cluster ids or service uuids), in order."""
        return tuple(h[2:] for h in self.hints if h.startswith("K@") and len(h) in (7, 29))

    def stripped(self) -> "Locator":
        """The locator without ``+A`` and ``+R`` signatures (other hints kept)."""
        return dataclasses.replace(self, hints=tuple(h for h in self.hints if h[0] not in "AR"))

    def bare(self) -> "Locator":
        """Just ``md5+size`` (this locator itself when it has no hints)."""
        return self if not self.hints else self._checked(self.md5, self.size, ())

    def with_hints(self, *hints: str) -> "Locator":
        """This locator with *hints* appended."""
        return Locator(self.md5, self.size, (*self.hints, *hints))

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """True when the locator carries a signature whose expiry has passed."""
        expiry = self.expires_at
        if expiry is None:
            return False
        return expiry <= (now or dt.datetime.now(dt.timezone.utc))


LocatorLike = Union[Locator, str]


def _check_hint(hint: str, text: str) -> None:
    if not isinstance(hint, str) or not _HINT.match(hint):
        raise LocatorError(
            f"invalid locator {text!r}: hint {hint!r} must be an uppercase letter then [A-Za-z0-9@_-]"
        )
    if hint[0] == "A" and not _PERMISSION.match(hint):
        raise LocatorError(f"invalid locator {text!r}: malformed permission hint (want A<40 hex>@<8 hex>)")
    if hint[0] == "R" and not _REMOTE.match(hint):
        raise LocatorError(
            f"invalid locator {text!r}: malformed remote signature (want R<cluster>-<40 hex>@<8 hex>)"
        )


def _expiry_hex(expires_at: dt.datetime | int) -> str:
    if isinstance(expires_at, dt.datetime):
        if expires_at.tzinfo is None:
            raise LocatorError("signature expiry must be an aware datetime (naive times are ambiguous)")
        seconds = int(expires_at.timestamp())
    else:
        seconds = int(expires_at)
    if not 0 <= seconds <= 0xFFFFFFFF:
        raise LocatorError(f"signature expiry {seconds} does not fit 8 hex digits")
    return f"{seconds:08x}"


def signature_for(md5: str, token: str, expiry_hex: str, key: bytes | str, ttl: int = DEFAULT_SIGNING_TTL) -> str:
    """HMAC-SHA1 of ``<md5>@<token>@<expiry hex>@<ttl hex>``, as lowercase hex."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    message = f"{md5}@{token}@{expiry_hex}@{ttl:x}"
    return hmac.new(key, message.encode("utf-8"), hashlib.sha1).hexdigest()


def sign_locator(
    locator: LocatorLike,
    *,
    key: bytes | str,
    token: str,
    ttl: int = DEFAULT_SIGNING_TTL,
    expires_at: dt.datetime | int | None = None,
    now: dt.datetime | None = None,
) -> Locator:
    """Return *locator* with a fresh ``+A`` signature for *token* (replacing any old one).

    The expiry defaults to ``now + ttl``.
    """
    loc = Locator.parse(locator)
    if expires_at is None:
        expires_at = (now or dt.datetime.now(dt.timezone.utc)) + dt.timedelta(seconds=ttl)
    expiry = _expiry_hex(expires_at)
    sig = signature_for(loc.md5, token, expiry, key, ttl)
    kept = tuple(h for h in loc.hints if not h.startswith("A"))
    return Locator(loc.md5, loc.size, (f"A{sig}@{expiry}", *kept))


def verify_signature(
    locator: LocatorLike,
    *,
    key: bytes | str,
    token: str,
    ttl: int = DEFAULT_SIGNING_TTL,
    now: dt.datetime | None = None,
) -> bool:
    """True when *locator*'s ``+A`` signature is valid for *token* and not expired.

    The comparison is constant-time.
    """
    loc = Locator.parse(locator)
    hint = loc.permission_hint
    if hint is None:
        return False
    expiry = hint[42:]
    expected = signature_for(loc.md5, token, expiry, key, ttl)
    if not hmac.compare_digest(expected, hint[1:41]):
        return False
    return not loc.is_expired(now)
