"""The keepstore error hierarchy: one root, specific leaves, never a token in a message."""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "BlockNotFound",
    "CacheError",
    "Cancelled",
    "ConfigError",
    "KeepError",
    "LocatorError",
    "NoServicesError",
    "ReadError",
    "WriteError",
    "redact",
]

# Arvados v2 tokens and bare secrets after "Bearer"/"OAuth2" are secret.
_SECRET_PATTERNS = (
    re.compile(r"v2/[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}/[A-Za-z0-9]+"),
    re.compile(r"((?:Bearer|OAuth2)\s+)\S+", re.IGNORECASE),
)
# Narrower, for the automatic scrub of every error message: prose such as "needs a bearer
# token" must survive, a copied Authorization header must not.
_HEADER_PATTERN = re.compile(r"(Authorization:\s*(?:Bearer|OAuth2)\s+)\S+", re.IGNORECASE)


WORD_SECRET_LENGTH = 8  # secrets shorter than this are masked only as whole words (see redact)


def redact(text: str, *secrets: str | None) -> str:
    """Return *text* with every given secret and every token-shaped string replaced by ``***``.

    A secret shorter than `WORD_SECRET_LENGTH` is masked only where it stands as a value, not
    inside a longer word: with a token ``t``, "environment" stays as it is ('t' and "=t" do
    not). A longer one is masked wherever it appears, even glued to other text. The secret part
    of a v2 token (after its last ``/``) is masked on its own too.
    """
    for secret in secrets:
        if secret:
            for part in dict.fromkeys((secret, secret.rsplit("/", 1)[-1])):
                if len(part) >= WORD_SECRET_LENGTH:
                    text = text.replace(part, "***")
                elif part:
                    text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(part)}(?![A-Za-z0-9])", "***", text)
    text = _SECRET_PATTERNS[0].sub("***", text)
    return _SECRET_PATTERNS[1].sub(r"\1***", text)


def mask_url_credentials(url: str) -> str:
    """*url* with everything between the scheme and the last ``@`` shown as ``***``."""
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def _scrub(text: str) -> str:
    """Redact token-shaped text: a safety net for messages built from untrusted values."""
    return _HEADER_PATTERN.sub(r"\1***", _SECRET_PATTERNS[0].sub("***", text))


scrub = _scrub  # the public name for other modules (keep serve's log lines)


class KeepError(Exception):
    """Root of every error keepstore raises on purpose.

    The one place that formats a request id: with *request_id* the message reads
    ``[req-...] message`` (a message that already starts so is left as it is). Token-shaped text
    in the message is redacted here too, as a last line of defence.

    Args:
        message: What went wrong.
        *args: Further exception arguments, as `Exception` takes them.
        request_id: The request's id (``X-Request-Id``), kept as ``request_id``.
    """

    request_id: str | None

    def __init__(self, message: str = "", *args: Any, request_id: str | None = None) -> None:
        if isinstance(message, str):
            prefix = f"[{request_id}] " if request_id else ""
            if prefix and not message.startswith(prefix):
                message = prefix + message
            message = _scrub(message)
        self.request_id = request_id
        super().__init__(message or type(self).__name__, *args)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class LocatorError(KeepError, ValueError):
    """A locator's text, or a value passed where a locator was expected, is not valid."""


class ConfigError(KeepError, ValueError):
    """A configuration value, file or environment variable is not valid."""


class NoServicesError(KeepError):
    """No Keep service is configured or usable for the request."""


class ReadError(KeepError):
    """A block could not be read (after every retry on every service).

    Args:
        message: What went wrong.
        locator: The block's locator.
        request_id: The request's id (formatted into the message by `KeepError`).
        attempts: A service root -> the last failure seen there (text; secrets are scrubbed).
    """

    def __init__(
        self,
        message: str = "",
        *,
        locator: str | None = None,
        request_id: str | None = None,
        attempts: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.locator = locator
        self.attempts = {root: _scrub(str(why)) for root, why in (attempts or {}).items()}

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), str(self), self.__dict__))


class BlockNotFound(ReadError):
    """Every service that answered said the block is not there (403/404/410)."""


class WriteError(KeepError):
    """Fewer replicas were stored than wanted.

    Args:
        message: What went wrong.
        wanted: Replicas wanted.
        done: Replicas stored.
        locator: The block's locator.
        request_id: The request's id (formatted into the message by `KeepError`).
        attempts: A service root -> what happened there (text; secrets are scrubbed).
    """

    def __init__(
        self,
        message: str = "",
        *,
        wanted: int = 0,
        done: int = 0,
        locator: str | None = None,
        request_id: str | None = None,
        attempts: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.wanted = wanted
        self.done = done
        self.locator = locator
        self.attempts = {root: _scrub(str(why)) for root, why in (attempts or {}).items()}

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), str(self), self.__dict__))


class CacheError(KeepError):
    """The block cache failed (disk full, read-only directory, damaged database)."""


class Cancelled(KeepError):
    """The operation was cancelled (`KeepClient.cancel()`, or Ctrl-C in ``keep``) before it finished.

    Transfers in flight are aborted and backoff waits cut short; nothing the operation would
    have written is left behind half-written.
    """


def _rebuild(cls: type[KeepError], message: str, state: dict[str, Any]) -> KeepError:
    exc = cls.__new__(cls)
    KeepError.__init__(exc, message)
    exc.__dict__.update(state)
    return exc
