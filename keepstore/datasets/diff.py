"""Compare two datasets by content (their files' segments): added, removed, changed and moved files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from .manifest import Manifest, ManifestFile, Segment

__all__ = ["Change", "DatasetDiff", "content_key", "diff_manifests"]

ContentKey = tuple[tuple[str, int, int, int], ...]


def content_key(segments: Iterable[Segment]) -> ContentKey:
    """What a file's bytes are, from its segments alone: ``(md5, block size, offset, length)``
    pieces, signatures dropped and adjacent pieces of one block merged, so the same bytes
    written as one segment or several give the same key."""
    out: list[tuple[str, int, int, int]] = []
    for seg in segments:
        if not seg.length:
            continue
        loc = seg.locator
        if out and out[-1][0] == loc.md5 and out[-1][1] == loc.size and out[-1][2] + out[-1][3] == seg.offset:
            md5, size, offset, length = out[-1]
            out[-1] = (md5, size, offset, length + seg.length)
        else:
            out.append((loc.md5, loc.size, seg.offset, seg.length))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Change:
    """A file present in both datasets with different content.

    Args:
        path: The file's path.
        old_size: Its size in A.
        new_size: Its size in B.
    """

    path: str
    old_size: int
    new_size: int


@dataclasses.dataclass(frozen=True)
class DatasetDiff:
    """How dataset B differs from dataset A; each list sorted by path.

    ``moved`` pairs ``(old path, new path)`` for non-empty files whose content is in B under
    another name only. Content is judged by segments: the same bytes stored in differently
    packed blocks count as changed unless `diff_manifests` was given a *digest* to read them.

    Args:
        added: ``(path, size)`` of files only in B.
        removed: ``(path, size)`` of files only in A.
        changed: Files in both with different content.
        moved: ``(old path, new path)`` of content B holds under another name only.
        unchanged: Files the same in both.
    """

    added: tuple[tuple[str, int], ...]  # (path, size)
    removed: tuple[tuple[str, int], ...]
    changed: tuple[Change, ...]
    moved: tuple[tuple[str, str], ...]
    unchanged: int

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.moved)

    def to_dict(self) -> dict[str, Any]:
        return {"added": [{"path": p, "size": n} for p, n in self.added],
                "removed": [{"path": p, "size": n} for p, n in self.removed],
                "changed": [dataclasses.asdict(c) for c in self.changed],
                "moved": [{"from": a, "to": b} for a, b in self.moved],
                "unchanged": self.unchanged}

    def lines(self) -> list[str]:
        """One line per difference, ``git diff --name-status`` style (A, D, M, R), by path."""
        rows = [(p, f"A\t{p}") for p, _n in self.added] + [(p, f"D\t{p}") for p, _n in self.removed]
        rows += [(c.path, f"M\t{c.path}") for c in self.changed]
        rows += [(b, f"R\t{a}\t{b}") for a, b in self.moved]
        return [line for _p, line in sorted(rows)]


Digest = Callable[[str, ManifestFile], str]  # ("a" or "b", file) -> md5 of its bytes


def diff_manifests(a: Manifest, b: Manifest, *, digest: Digest | None = None) -> DatasetDiff:
    """The differences from *a* to *b*, file by file, decided by content keys.

    With *digest* (which reads a file of either side and hashes it), files of the same size
    whose segments differ are compared by their bytes too, so the same bytes packed into
    other blocks (two independent puts) are the same file; without it they count as changed.
    """
    old = {mf.path: mf for mf in a.walk_files()}
    new = {mf.path: mf for mf in b.walk_files()}
    keys: dict[tuple[str, str], ContentKey] = {}
    digests: dict[tuple[str, str], str] = {}

    def key(side: str, mf: ManifestFile) -> ContentKey:
        if (side, mf.path) not in keys:
            keys[(side, mf.path)] = content_key(mf.segments)
        return keys[(side, mf.path)]

    def hashed(side: str, mf: ManifestFile) -> str:
        assert digest is not None
        if (side, mf.path) not in digests:
            digests[(side, mf.path)] = digest(side, mf)
        return digests[(side, mf.path)]

    def same(x: ManifestFile, y: ManifestFile) -> bool:
        if x.size != y.size:
            return False
        if key("a", x) == key("b", y):
            return True
        return digest is not None and hashed("a", x) == hashed("b", y)

    changed, unchanged = [], 0
    for path in sorted(old.keys() & new.keys()):
        if same(old[path], new[path]):
            unchanged += 1
        else:
            changed.append(Change(path, old[path].size, new[path].size))
    gone = sorted(old.keys() - new.keys())
    came = sorted(new.keys() - old.keys())
    by_size: dict[int, list[str]] = {}
    for path in came:
        if new[path].size:
            by_size.setdefault(new[path].size, []).append(path)
    moved = []
    for path in gone:
        candidates = by_size.get(old[path].size, [])
        match = next((c for c in candidates if same(old[path], new[c])), None)
        if match is not None:
            candidates.remove(match)
            moved.append((path, match))
    moved_from = {x for x, _y in moved}
    moved_to = {y for _x, y in moved}
    return DatasetDiff(
        added=tuple((p, new[p].size) for p in came if p not in moved_to),
        removed=tuple((p, old[p].size) for p in gone if p not in moved_from),
        changed=tuple(changed), moved=tuple(moved), unchanged=unchanged)
