"""Dataset receipts, the dataset path error, and `atomic_write`: shared by the writer and the reader."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import secrets
from collections.abc import Callable
from typing import Any, BinaryIO

from ..errors import KeepError

__all__ = ["BlockReceipt", "DatasetError", "Receipt", "atomic_write", "new_temp"]

_TEMP_PREFIX = secrets.token_hex(6)
_TEMP_COUNTER = itertools.count()


class DatasetError(KeepError, ValueError):
    """A dataset path that cannot be used: invalid, or already in the dataset."""


@dataclasses.dataclass(frozen=True)
class BlockReceipt:
    """One stored block: its locator, the replicas counted and the services that confirmed it.

    ``sent`` is False for a block not uploaded by this write: found already stored (its
    replicas and services are those the HEADs confirmed), or referenced from another dataset.

    Args:
        locator: The block's locator as the store returned it (signed when the services sign).
        size: The block's size in bytes.
        replicas: Replicas the services confirmed.
        services: The roots of the services that confirmed a replica.
        storage_classes: Replicas confirmed per storage class.
        sent: False for a block this write did not upload (found stored already, or referenced).
    """

    locator: str
    size: int
    replicas: int
    services: tuple[str, ...] = ()
    storage_classes: dict[str, int] = dataclasses.field(default_factory=dict)
    sent: bool = True


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What a dataset write stored; ``locator`` is the dataset's address.

    Args:
        locator: The dataset's address: the manifest block's locator.
        portable_data_hash: The manifest's portable data hash (unsigned; it never expires).
        files: Files in the dataset.
        bytes: Bytes of file content.
        blocks: Each data block stored.
        manifest_block: The manifest block.
        bytes_sent: Block bytes uploaded (each block once, whatever its replicas), manifest included.
        bytes_skipped: Block bytes not uploaded because they were found stored already.
    """

    locator: str
    portable_data_hash: str
    files: int
    bytes: int
    blocks: tuple[BlockReceipt, ...]
    manifest_block: BlockReceipt
    bytes_sent: int = 0  # block bytes uploaded (each block once, whatever its replicas), manifest included
    bytes_skipped: int = 0  # block bytes not uploaded because they were found stored already

    @property
    def min_replicas(self) -> int:
        """The lowest replica count over every block, the manifest block included."""
        return min([b.replicas for b in self.blocks] + [self.manifest_block.replicas])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["min_replicas"] = self.min_replicas
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Receipt":
        d = json.loads(text)
        d.pop("min_replicas", None)
        d["blocks"] = tuple(BlockReceipt(**{**b, "services": tuple(b["services"])}) for b in d["blocks"])
        mb = d["manifest_block"]
        d["manifest_block"] = BlockReceipt(**{**mb, "services": tuple(mb["services"])})
        return cls(**d)


def atomic_write(dest: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Create or replace the file *dest* with what ``write(f)`` writes, atomically.

    The data goes to a new, uniquely named file beside *dest* (created with mode 0666 less the
    umask, like any new file), is fsynced, and is renamed over *dest*; on any failure the temp
    file is removed and *dest* is untouched. OSErrors name *dest*, not the temp file.
    """
    dest = os.fspath(dest)
    fd, temp = new_temp(dest)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def new_temp(dest: str) -> tuple[int, str]:
    """Open a new, uniquely named temp file beside *dest* for writing: ``(fd, temp path)``.

    Mode 0666 less the umask, like any new file; OSErrors name *dest*, not the temp file.
    """
    directory = os.path.dirname(os.path.abspath(dest))
    while True:
        # A random prefix drawn once per process and a counter: unique without a getrandom call
        # per file (a measurable cost when extracting 100,000 files); O_EXCL catches the rest.
        temp = os.path.join(directory, f".keep-{_TEMP_PREFIX}{next(_TEMP_COUNTER):x}.partial")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), temp
        except FileExistsError:
            continue  # taken (a forked process shares our prefix): take the next number
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, dest) from exc
