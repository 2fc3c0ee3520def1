"""``keep diff A B``: the files added, removed, changed and moved between two datasets, by content."""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from ..datasets.diff import diff_manifests
from ..datasets.manifest import ManifestError, ManifestFile
from ..datasets.reader import DatasetReader
from ..datasets.targets import split_target
from ..errors import KeepError
from ..open import open_store

__all__ = ["cmd_diff", "register"]

_CHUNK = 8 << 20


def _reader(store: Any, target: str) -> DatasetReader:
    loc, path = split_target(target)
    try:
        reader = DatasetReader(store, loc)
    except ManifestError:
        raise KeepError(f"{loc} is a plain block, not a dataset") from None
    if path and not reader.manifest.is_dir(path):
        reader.close()
        raise KeepError(f"{target}: not a directory of the dataset (diff compares datasets or directories)")
    return reader.subtree(path)


def _md5(reader: DatasetReader, mf: ManifestFile) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with reader.open(mf.path) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cmd_diff(args: argparse.Namespace) -> int:
    with open_store(args) as store, _reader(store, args.a) as a, _reader(store, args.b) as b:
        digest = (lambda side, mf: _md5(a if side == "a" else b, mf)) if args.read else None
        result = diff_manifests(a.manifest, b.manifest, digest=digest)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.lines():
            print(line)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``diff`` to the ``keep`` parser."""
    diff = sub.add_parser("diff", help="list files added (A), removed (D), changed (M) and moved (R) from A to B",
                          description="Compare two datasets (or directories in them, LOCATOR/path) by content: "
                                      "files are the same when their block segments are.")
    diff.add_argument("a", metavar="A", help="LOCATOR[/path] of the old dataset")
    diff.add_argument("b", metavar="B", help="LOCATOR[/path] of the new dataset")
    diff.add_argument("--json", action="store_true", help="print added, removed, changed and moved as JSON")
    diff.add_argument("--read", action="store_true",
                      help="also compare the bytes of same-size files whose blocks differ (fetches those blocks)")
    diff.set_defaults(func=cmd_diff)
