"""Datasets: files and directories written as blocks plus a manifest block, and read back."""

from __future__ import annotations

from .dataset_reader import DEFAULT_CACHE_BYTES, BlockSource, DatasetReader, KeepFile, open_dataset
from .dataset_receipt import BlockReceipt, DatasetError, Receipt, atomic_write
from .dataset_writer import DatasetWriter

__all__ = ["DEFAULT_CACHE_BYTES", "BlockReceipt", "BlockSource", "DatasetError", "DatasetReader", "DatasetWriter",
           "KeepFile", "Receipt", "atomic_write", "open_dataset"]
