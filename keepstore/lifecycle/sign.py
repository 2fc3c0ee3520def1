"""Re-sign a dataset with the blob signing key: fresh ``+A`` signatures, same portable data hash.

A dataset written to a server that signs holds signed block locators in its manifest, and its
own locator is signed too; both expire after the servers' signing TTL. Arvados re-signs on every
API fetch; a deployment without an API server re-signs here, with the key the servers share.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol

from ..datasets.manifest import Manifest, ManifestError
from ..errors import KeepError
from ..locator import DEFAULT_SIGNING_TTL, Locator, LocatorLike, sign_locator

__all__ = ["SignedDataset", "resign_dataset", "resign_manifest_text"]


class _Store(Protocol):
    def get(self, locator: LocatorLike) -> bytes: ...

    def put(self, data: bytes) -> Locator: ...


@dataclasses.dataclass(frozen=True)
class SignedDataset:
    """What `resign_dataset` stored: the fresh dataset locator and what it signed.

    Args:
        locator: The new manifest block's locator, signed by the services for the token.
        portable_data_hash: The dataset's portable data hash (unchanged by re-signing).
        signed_locators: Block locators signed afresh in the manifest text.
        expires_at: When the new dataset locator's signature expires (ISO 8601, UTC).
    """

    locator: str
    portable_data_hash: str
    signed_locators: int
    expires_at: str

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _is_locator_token(token: str) -> bool:
    # In a stream line, block locators come after the stream name and before the first file
    # segment; a segment (``pos:len:name``) always holds a colon and a locator never does.
    return ":" not in token


def resign_manifest_text(text: str, *, key: bytes | str, token: str, ttl: int = DEFAULT_SIGNING_TTL,
                         now: dt.datetime | None = None) -> tuple[str, int]:
    """*text* with every block locator signed afresh for *token*; return (text, locators signed).

    Only the ``+A`` hints change, so the portable data hash stays the same (it is checked).
    Raises `ManifestError` when *text* is not a manifest.
    """
    before = Manifest.parse(text).portable_data_hash()
    lines: list[str] = []
    signed = 0
    for line in text.split("\n"):
        if not line:
            lines.append(line)
            continue
        tokens = line.split(" ")
        out = tokens[:1]
        for i, word in enumerate(tokens[1:], 1):
            if not _is_locator_token(word):
                out.extend(tokens[i:])
                break
            out.append(str(sign_locator(word, key=key, token=token, ttl=ttl, now=now)))
            signed += 1
        lines.append(" ".join(out))
    result = "\n".join(lines)
    after = Manifest.parse(result).portable_data_hash()
    if after != before:  # pragma: no cover - only a bug here could change the content
        raise ManifestError(f"re-signing changed the portable data hash ({before} -> {after})")
    return result, signed


def resign_dataset(store: _Store, locator: LocatorLike, *, key: bytes | str, token: str,
                   ttl: int = DEFAULT_SIGNING_TTL, now: dt.datetime | None = None) -> SignedDataset:
    """Re-sign the dataset whose manifest block is *locator* (signed, expired or bare) for *token*.

    The manifest is fetched with a fresh signature made here, its block locators are signed
    afresh, and the new manifest text is stored through *store* (which must send *token*, so the
    servers sign the answer for it). *ttl* must be the servers' ``--signing-ttl``: it is part of
    the signed message. Raises `ManifestError` when the block is not a manifest.
    """
    loc = Locator.parse(locator)
    fetched = store.get(sign_locator(loc.stripped(), key=key, token=token, ttl=ttl, now=now))
    try:
        text = fetched.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{loc.stripped()} is not a dataset: its block is not UTF-8 text") from None
    try:
        fresh, count = resign_manifest_text(text, key=key, token=token, ttl=ttl, now=now)
    except ManifestError as exc:
        raise ManifestError(f"{loc.stripped()} is not a dataset ({exc}); sign a block with --block") from None
    stored = store.put(fresh.encode("utf-8"))
    if stored.signature is None:
        raise KeepError(f"the services stored the re-signed manifest of {loc.stripped()} unsigned: do they have a "
                        f"signing key (keep serve --signing-key-file)?")
    expiry = stored.expires_at
    return SignedDataset(locator=str(stored), portable_data_hash=Manifest.parse(fresh).portable_data_hash(),
                         signed_locators=count, expires_at=expiry.isoformat() if expiry else "")
