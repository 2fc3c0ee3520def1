"""Datasets: files and directories written as blocks plus a manifest block, and read back."""

from __future__ import annotations

from .manifest import Manifest, ManifestError, ManifestFile, Segment
from .reader import DEFAULT_CACHE_BYTES, BlockSource, DatasetReader, KeepFile, open_dataset
from .receipt import BlockReceipt, DatasetError, Receipt, atomic_write
from .tree import ReadPath
from .writer import DatasetWriter

__all__ = ["DEFAULT_CACHE_BYTES", "BlockReceipt", "BlockSource", "DatasetError", "DatasetReader", "DatasetWriter",
           "KeepFile", "Manifest", "ManifestError", "ManifestFile", "ReadPath", "Receipt", "Segment", "atomic_write",
           "open_dataset"]
