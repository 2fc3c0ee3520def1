"""Writing through ``keep://new/``: written files and ``fs.transaction`` blocks, each stored as one new dataset."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from fsspec.spec import AbstractBufferedFile
from fsspec.transaction import Transaction

from ..datasets import DatasetWriter

if TYPE_CHECKING:  # pragma: no cover
    from .fsspec import KeepFileSystem

__all__ = ["SPOOL_BYTES", "KeepTransaction", "KeepWriteFile"]

log = logging.getLogger(__name__)

SPOOL_BYTES = 64 << 20  # a file being written stays in memory up to this, then spills to a temp file

Fill = Callable[[DatasetWriter], Any]


class KeepTransaction(Transaction):
    """``with fs.transaction as tx:``: every write inside the block (files opened ``"wb"``,
    ``pipe``, ``pipe_file``, ``put``, so pandas' ``to_parquet``/``to_csv`` and zarr too) goes into
    **one** new dataset, stored when the block ends without an exception; ``tx.locator`` then
    names it (and ``fs.last_dataset``). After an exception nothing is stored and ``locator``
    stays None; blocks already uploaded are left for garbage collection.
    """

    fs: KeepFileSystem

    def __init__(self, fs: KeepFileSystem, **kwargs: Any) -> None:
        super().__init__(fs, **kwargs)
        self.locator: str | None = None
        self._writer: DatasetWriter | None = None
        self._lock = threading.Lock()  # files may be committed, and pipes made, from several threads

    def add(self, fill: Fill) -> None:
        """Run *fill* on this transaction's dataset writer (made on first use)."""
        with self._lock:
            if self._writer is None:
                self._writer = DatasetWriter(self.fs.store, copies=self.fs.copies)
            fill(self._writer)

    def complete(self, commit: bool = True) -> None:
        fs, done = self.fs, False
        try:
            super().complete(commit)  # each open file adds itself (commit) or is dropped (discard)
            done = True
        finally:
            with self._lock:
                writer, self._writer = self._writer, None
            if writer is not None and commit and done:
                self.locator = writer.finish().locator
                fs.last_dataset = self.locator
                log.info("transaction stored dataset %s", self.locator)
            elif writer is not None:
                writer.abort()


class KeepWriteFile(AbstractBufferedFile):
    """A file being written to ``keep://new/<path>``; it is stored when closed.

    The bytes are spooled (in memory up to `SPOOL_BYTES`, then in a temporary file). Inside a
    transaction the file joins the transaction's dataset when that commits; otherwise closing it
    stores a dataset holding just this file, whose locator is then `locator` (and the
    filesystem's ``last_dataset``).
    """

    fs: KeepFileSystem

    def __init__(self, fs: KeepFileSystem, path: str, mode: str, *, target: str, **kwargs: Any) -> None:
        super().__init__(fs, path, mode, **kwargs)
        self.target = target  # the path inside the new dataset
        self.locator: str | None = None
        # the spool lives as long as this file (no with-block): commit() or discard() closes it
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115

    def _upload_chunk(self, final: bool = False) -> bool:
        self._spool.write(self.buffer.getbuffer())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        """Store the file: into the open transaction's dataset, or as a dataset of its own."""
        self._spool.seek(0)
        try:
            spool = cast(BinaryIO, self._spool)
            self.locator = self.fs.store_files(lambda writer: writer.add_stream(self.target, spool))
        finally:
            self._spool.close()

    def discard(self) -> None:
        """Drop what was written (a transaction that failed)."""
        self._spool.close()
