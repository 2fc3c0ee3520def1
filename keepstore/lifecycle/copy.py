"""keep copy: copy a dataset to another store, sending only the blocks it lacks, and store its manifest there."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..datasets.manifest import Manifest, ManifestError
from ..errors import KeepError
from ..locator import Locator
from ..services import probe_order
from ..store import BlockStore

__all__ = ["BlockCopy", "CopyReport", "copy_dataset"]

_LOCATOR_TOKEN = re.compile(r"(?<![^ ])[0-9a-f]{32}\+[0-9]+(?:\+[A-Z][A-Za-z0-9@_-]*)*(?![^ \n])")


@dataclasses.dataclass(frozen=True)
class BlockCopy:
    """One block of the dataset: its locator at the destination and whether it was sent.

    Args:
        source: The block's locator at the source.
        destination: Its locator at the destination.
        sent: False when the destination had it already.
    """

    source: Locator
    destination: Locator
    sent: bool


@dataclasses.dataclass(frozen=True)
class CopyReport:
    """What `copy_dataset` did; ``locator`` is the dataset's locator at the destination.

    Args:
        source: The dataset's locator at the source.
        locator: Its locator at the destination.
        portable_data_hash: Its portable data hash (the same at both ends).
        blocks: Each block, and whether it was sent.
    """

    source: str
    locator: str
    portable_data_hash: str
    blocks: tuple[BlockCopy, ...]

    @property
    def sent(self) -> list[BlockCopy]:
        return [b for b in self.blocks if b.sent]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "locator": self.locator, "portable_data_hash": self.portable_data_hash,
                "blocks": len(self.blocks), "sent": len(self.sent),
                "bytes_sent": sum(b.source.size for b in self.sent),
                "skipped": len(self.blocks) - len(self.sent)}


def _held(dest: BlockStore, loc: Locator, copies: int) -> bool:
    """Whether *dest* already has *copies* good-looking copies of *loc* (HEAD; a Keep client
    asks its services in probe order and stops once it has counted enough)."""
    from ..client import KeepClient

    bare = loc.bare()
    if not isinstance(dest, KeepClient):
        return dest.exists(bare)
    found = 0
    for service in probe_order(bare, dest.services):
        if service.read_only or service.is_gateway:
            continue
        try:
            found += dest.head_on(service, bare)
        except KeepError:  # refused (a signing server wants a signature) or down: not counted
            continue
        if found >= copies:
            return True
    return False


def copy_dataset(source: BlockStore, dest: BlockStore, locator: str, *, copies: int | None = None,
                 threads: int = 8, progress: Callable[[int], Any] = lambda n: None) -> CopyReport:
    """Copy the dataset *locator* from *source* to *dest* and store its manifest there.

    Each block the destination lacks (fewer than *copies* answer HEAD) is read from *source*
    (verified) and put to *dest*, *threads* blocks at a time; *progress* is called with the
    bytes of each block done. Blocks already there are not sent, so a re-run after an
    interruption sends only what is still missing. The manifest is re-written with the
    destination's locators (signed, when it signs) and stored there; its portable data hash
    is checked to be the source's. A destination that signs gives signatures only for what
    is put, so when it signs, blocks skipped as present are sent too.
    """
    copies = copies or getattr(dest, "copies", None) or 1
    root = Locator.parse(locator)
    raw = source.get(root)
    try:
        manifest = Manifest.parse(raw)
    except (ManifestError, UnicodeDecodeError) as exc:
        raise KeepError(f"{root.bare()} is not a dataset (its block is not a manifest: {exc})") from None
    blocks = [b for b in manifest.blocks() if b.size > 0]

    def one(loc: Locator, check: bool = True) -> BlockCopy:
        if check and _held(dest, loc, copies):
            progress(loc.size)
            return BlockCopy(loc, loc.bare(), False)
        stored = dest.put_block(source.get(loc), copies=copies).locator
        progress(loc.size)
        return BlockCopy(loc, stored, True)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keep-copy") as pool:
        done = list(pool.map(one, blocks))
        text = _relocated(manifest, done)
        stored = dest.put_block(text, copies=copies).locator
        if stored.permission_hint is not None and any(not b.sent for b in done):
            # The destination signs: a skipped block has no signature for it, so it could not be read
            # where signatures are enforced. A PUT is what earns one.
            done = list(pool.map(lambda b: one(b.source, check=False) if not b.sent else b, done))
            text = _relocated(manifest, done)
            stored = dest.put_block(text, copies=copies).locator
    return CopyReport(str(root.bare()), str(stored), manifest.portable_data_hash(), tuple(done))


def _relocated(manifest: Manifest, copied: list[BlockCopy]) -> bytes:
    """The manifest text with each block locator replaced by its destination locator; the
    portable data hash must not change (only signatures may)."""
    where = {b.source.md5: str(b.destination) for b in copied}

    def swap(match: re.Match[str]) -> str:
        loc = Locator.parse(match.group(0))
        return where.get(loc.md5, str(loc.bare()))

    text = _LOCATOR_TOKEN.sub(swap, manifest.text)
    if Manifest.parse(text).portable_data_hash() != manifest.portable_data_hash():
        raise KeepError("the re-signed manifest does not match the source's portable data hash; nothing stored")
    return text.encode("utf-8")
