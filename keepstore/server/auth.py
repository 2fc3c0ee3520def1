"""Permissions: who may read what on a `KeepServer` (signatures, the system token), as keepstore 3.x."""

from __future__ import annotations

import dataclasses
import hmac

from ..errors import ConfigError
from ..locator import DEFAULT_SIGNING_TTL, Locator, sign_locator, signature_for

__all__ = ["Denial", "Permissions"]

Denial = tuple[int, str]  # (status, reason) as keepstore 3.x answers a refused request


@dataclasses.dataclass(frozen=True)
class Permissions:
    """The signing policy of one server.

    *signing_key* signs PUT answers for the caller's token; with *require_signatures* a GET or
    HEAD needs a valid ``+A`` signature for the token it sends. *system_token* may read
    ``/index``. The key and token never appear in the repr.

    Args:
        signing_key: Signs PUT answers for the caller's token (never shown in the repr).
        signing_ttl: Signature lifetime in seconds; part of the signed message.
        require_signatures: A GET or HEAD needs a valid ``+A`` signature for the token it sends.
        system_token: The token that may read ``/index`` (never shown in the repr).
    """

    signing_key: bytes | None = dataclasses.field(default=None, repr=False)
    signing_ttl: int = DEFAULT_SIGNING_TTL
    require_signatures: bool = False
    system_token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.signing_key, str):
            object.__setattr__(self, "signing_key", self.signing_key.encode())
        if self.require_signatures and not self.signing_key:
            raise ConfigError("--require-signatures needs a signing key (--signing-key-file)")

    def sign(self, loc: Locator, token: str | None) -> Locator:
        """*loc* signed for *token* (unchanged without a key or a token)."""
        if not self.signing_key or not token:
            return loc
        return sign_locator(loc, key=self.signing_key, token=token, ttl=self.signing_ttl)

    def check_read(self, loc: Locator, token: str | None) -> Denial | None:
        """None when a GET/HEAD of *loc* may proceed, else (status, reason) as keepstore 3.x answers."""
        if not self.require_signatures:
            return None
        if not token:
            return 401, "no token"
        hint = loc.permission_hint
        if hint is None:
            return 400, "unsigned locator"
        if loc.is_expired():  # before the signature, as keepstore 3.x: expired-and-wrong is 401
            return 401, "expired signature"
        assert self.signing_key is not None  # __post_init__ makes enforcement need a key
        expected = signature_for(loc.md5, token, hint[42:], self.signing_key, self.signing_ttl)
        if not hmac.compare_digest(expected, hint[1:41]):
            return 400, "invalid signature"
        return None

    def local_signature(self, loc: Locator, size: int, token: str | None) -> Locator | None:
        """The ``X-Keep-Locator`` answer to ``X-Keep-Signature: local`` for *loc*, which
        `check_read` has let through; None when there is none to give.

        Only ``+R`` locators get one, as from keepstore 3.x. This server cannot check a remote
        signature, so it vouches only for what it checked itself: one that enforces signatures
        has seen a valid ``+A`` for *token* on *loc* and signs afresh; one that does not
        authenticates nobody, so it answers the bare locator, which works on this server and
        is worthless to an enforcing one that shares the key (no signing oracle).
        """
        if not any(h.startswith("R") for h in loc.hints):
            return None
        bare = Locator(loc.md5, size)
        return self.sign(bare, token) if self.require_signatures else bare

    def check_system_token(self, token: str | None) -> Denial | None:
        """None when *token* is the system token (for ``/index``), else 401 (none) or 403."""
        if not token:
            return 401, "no token"
        if not self.system_token or not hmac.compare_digest(token.encode(), self.system_token.encode()):
            return 403, "not the system token"
        return None
