"""Arvados manifest text: parse, list files, normalise, strip, and the portable data hash."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import overload

from ..locator import EMPTY_BLOCK, Locator
from .manifest_index import ManifestError, ManifestIndex, escape_name, unescape_name
from .manifest_normal import distinct_blocks, normalized_text, segments_normal_text

__all__ = ["FileSegments", "Manifest", "ManifestError", "ManifestFile", "Segment", "escape_name",
           "unescape_name"]

_BARE = re.compile(r"(?<= )([0-9a-f]{32}\+[0-9]+)(?:\+[^ \n]*)?")
# FileSegments' ranges before their first use (shared, never filled: _load replaces them)
_NOT_LOADED: list[int] = []
_NO_RANGES: list[tuple[int, int, int, int]] = []


@dataclasses.dataclass(frozen=True)
class Segment:
    """``length`` bytes of one block, starting ``offset`` bytes into it.

    Args:
        locator: The block.
        offset: Where the segment starts in the block.
        length: Bytes of the block in the segment.
    """

    locator: Locator
    offset: int
    length: int


class FileSegments(Sequence[Segment]):
    """A parsed file's segments, made on demand: each of the file's ``pos:len:name`` tokens is a
    range over its stream's block list, so a file spanning a million blocks costs one range here,
    and ``segments[i]`` is found by bisecting (it equals a tuple of the same `Segment` values).

    Args:
        index: The parsed manifest.
        file: The file's number in *index*.
    """

    __slots__ = ("_counts", "_file", "_index", "_ranges", "_starts")

    def __init__(self, index: ManifestIndex, file: int) -> None:
        self._index = index
        self._file = file
        # Filled on first use (a look-up that only wants the size never needs them):
        self._ranges: list[tuple[int, int, int, int]] = _NO_RANGES  # (first block, last block, start, end)
        self._counts: list[int] = _NOT_LOADED  # segments before each range
        self._starts: list[int] = _NOT_LOADED  # file offset where each range starts

    def _load(self) -> None:
        counts, starts, ranges = [0], [0], []
        for row in self._index.file_rows(self._file):
            first, last, start, end = self._index.block_span(row)
            if first <= last:
                ranges.append((first, last, start, end))
                counts.append(counts[-1] + last - first + 1)
                starts.append(starts[-1] + end - start)
        self._ranges, self._counts, self._starts = ranges, counts, starts

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self._index.file_size(self._file)

    def __len__(self) -> int:
        if not self._counts:
            self._load()
        return self._counts[-1]

    @overload
    def __getitem__(self, i: int) -> Segment: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[Segment, ...]: ...

    def __getitem__(self, i: int | slice) -> Segment | tuple[Segment, ...]:
        if isinstance(i, slice):
            return tuple(self[k] for k in range(*i.indices(len(self))))
        n = len(self)
        k = i + n if i < 0 else i
        if not 0 <= k < n:
            raise IndexError("segment index out of range")
        r = bisect.bisect_right(self._counts, k) - 1
        first, _last, start, end = self._ranges[r]
        return self._segment(first + k - self._counts[r], start, end)

    def __iter__(self) -> Iterator[Segment]:
        if not self._counts:
            self._load()
        for first, last, start, end in self._ranges:
            for block in range(first, last + 1):
                yield self._segment(block, start, end)

    def _segment(self, block: int, start: int, end: int) -> Segment:
        index = self._index
        block_end = index.blk_end[block]
        block_start = block_end - index.blk_size[block]
        lo, hi = max(start, block_start), min(end, block_end)
        return Segment(index.locator(block), lo - block_start, hi - lo)

    def overlapping(self, offset: int, length: int) -> list[tuple[int, int, Segment]]:
        """See `ManifestFile.segments_in`; O(log n) to find the first piece."""
        if not self._counts:
            self._load()  # size alone does not load the ranges this walks
        index, out = self._index, []
        end = min(offset + length, self.size)
        r = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while offset < end and r < len(self._ranges):
            first, last, start, _stop = self._ranges[r]
            lo = start + max(offset - self._starts[r], 0)
            hi = start + min(end, self._starts[r + 1]) - self._starts[r]
            block = bisect.bisect_right(index.blk_end, lo, first, last + 1)
            while block <= last and index.blk_end[block] - index.blk_size[block] < hi:
                block_start = index.blk_end[block] - index.blk_size[block]
                a, b = max(lo, block_start), min(hi, index.blk_end[block])
                out.append((self._counts[r] + block - first, self._starts[r] + a - start,
                            Segment(index.locator(block), a - block_start, b - a)))
                block += 1
            r += 1
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (FileSegments, tuple, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"<FileSegments: {len(self)} segments, {self.size} bytes>"


@dataclasses.dataclass(frozen=True)
class ManifestFile:
    """One file: its path inside the dataset (``dir/name``) and the block ranges that make it.

    ``segments`` is a sequence of `Segment` (a tuple, or a lazy `FileSegments` for parsed files).
    """

    path: str
    segments: Sequence[Segment]

    @property
    def size(self) -> int:
        segs = self.segments
        return segs.size if isinstance(segs, FileSegments) else sum(s.length for s in segs)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def segments_in(self, offset: int, length: int) -> list[tuple[int, int, Segment]]:
        """The pieces of ``[offset, offset+length)``: ``(segment index, file offset, Segment)``,
        each Segment cut to the part inside the range; in O(log n) for a parsed file."""
        segs = self.segments
        if isinstance(segs, FileSegments):
            return segs.overlapping(offset, length)
        out, pos, end = [], 0, offset + length
        for i, seg in enumerate(segs):
            lo, hi = max(pos, offset), min(pos + seg.length, end)
            if lo < hi:
                out.append((i, lo, Segment(seg.locator, seg.offset + lo - pos, hi - lo)))
            pos += seg.length
        return out


def _check_path(path: str, where: str) -> str:
    if not isinstance(path, str) or any(p in ("", ".", "..") for p in path.split("/")):
        raise ManifestError(f"{where}: invalid path {path!r} (empty, '.' or '..' component)")
    if "\x00" in path:
        raise ManifestError(f"{where}: path {path!r} contains NUL")
    return path


def _raw_text(files: Mapping[str, Iterable[Segment]], directories: Iterable[str]) -> str:
    """Manifest text (one line per file, not normal form) for files given as segments."""
    lines = []
    for path in files:
        _check_path(path, "file")
    for path, segs in files.items():
        head, _, name = path.rpartition("/")
        escaped = escape_name(name)
        locators, tokens, total = [], [], 0
        for seg in segs:
            if seg.length:  # a zero-length piece holds nothing (and the parsed form has none)
                locators.append(str(seg.locator))
                tokens.append(f"{total + seg.offset}:{seg.length}:{escaped}")
                total += seg.locator.size
        if not locators:
            locators, tokens = [EMPTY_BLOCK], [f"0:0:{escaped}"]
        lines.append(" ".join([f"./{escape_name(head)}" if head else ".", *locators, *tokens]) + "\n")
    for directory in directories:
        lines.append(f"./{escape_name(_check_path(directory, 'directory'))} {EMPTY_BLOCK} 0:0:\\056\n")
    return "".join(lines)


class _Files(Mapping[str, ManifestFile]):
    """Path -> `ManifestFile`, in manifest order, made on lookup from the index."""

    def __init__(self, index: ManifestIndex) -> None:
        self._index = index

    def __getitem__(self, path: str) -> ManifestFile:
        found = self._index.find_file(path) if isinstance(path, str) else -1
        if found < 0:
            raise KeyError(path)
        return ManifestFile(path, FileSegments(self._index, found))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._index.find_file(path) >= 0

    def __iter__(self) -> Iterator[str]:
        return (self._index.file_path(f) for f in range(len(self._index.file_dir)))

    def __len__(self) -> int:
        return len(self._index.file_dir)


class Manifest:
    """A parsed manifest: files (path -> `ManifestFile`) and directories, in manifest order.

    ``str(manifest)`` is the exact text it was parsed from; `normalized_text()` is the
    Arvados normal form, and `portable_data_hash()` matches Arvados for the same content.
    Parsing keeps the text and flat arrays of offsets into it (see `ManifestIndex`), so memory
    stays a small multiple of the text and every operation is linear (or n log n) in it.
    """

    def __init__(self, files: Mapping[str, ManifestFile] | None = None,
                 directories: Iterable[str] = (), *, text: str | None = None,
                 index: ManifestIndex | None = None) -> None:
        """Build from *files* and *directories*, or take an already parsed *index* (as `parse` does);
        ``str()`` gives *text* when given, else the normal form."""
        if index is None:
            given = dict(files or {})
            for path in given:
                _check_path(path, "file")
            index = ManifestIndex(_raw_text({p: f.segments for p, f in given.items()}, directories))
        self._index = index
        self._text = text

    # -- construction -------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | bytes) -> "Manifest":
        """Parse manifest text; raise `ManifestError` naming the line and token on bad input."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"manifest is not UTF-8 text: {exc}") from None
        return cls(index=ManifestIndex(text), text=text)

    @classmethod
    def from_files(cls, files: Mapping[str, Iterable[Segment]], directories: Iterable[str] = ()) -> "Manifest":
        """Build a manifest (normal form) from file paths and their segments."""
        for path in files:
            _check_path(path, "file")
        dirs = [_check_path(d, "directory") for d in directories]
        text = segments_normal_text(files, dirs)
        return cls(index=ManifestIndex(text), text=text)

    # -- text ---------------------------------------------------------------------------

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<Manifest {len(self._index.file_dir)} files, {self.total_size} bytes>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.normalized_text(strip=True) == other.normalized_text(strip=True)

    __hash__ = None  # type: ignore[assignment]

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.normalized_text()
        return self._text

    def normalized_text(self, *, strip: bool = False) -> str:
        """The manifest in Arvados normal form (what ``Collection.manifest_text()`` gives)."""
        return normalized_text(self._index, strip)

    def stripped_text(self) -> str:
        """The manifest text with every hint but the size removed from block locators."""
        return _BARE.sub(r"\1", self.text)

    def portable_data_hash(self) -> str:
        """``md5+size`` of the normalised, stripped text: Arvados' portable data hash."""
        data = self.normalized_text(strip=True).encode("utf-8")
        return f"{hashlib.md5(data, usedforsecurity=False).hexdigest()}+{len(data)}"

    # -- listing --------------------------------------------------------------------------

    @property
    def files(self) -> Mapping[str, ManifestFile]:
        return _Files(self._index)

    @property
    def directories(self) -> frozenset[str]:
        index = self._index
        return frozenset(index.dir_path(d) for d in range(1, len(index.dir_name)))

    @property
    def total_size(self) -> int:
        return self._index.total_size

    def blocks(self) -> list[Locator]:
        """Every distinct block the manifest refers to, in first-use order."""
        return distinct_blocks(self._index)

    def file(self, path: str) -> ManifestFile:
        """The file at *path*; `FileNotFoundError` if there is none (`IsADirectoryError` for a dir)."""
        if path[:1] == "/" or path[-1:] == "/":
            path = path.strip("/")
        index = self._index
        found = index.find_file(path)
        if found < 0:
            if index.find_dir(path) >= 0:
                raise IsADirectoryError(path or "/")
            raise FileNotFoundError(path)
        return ManifestFile(path, FileSegments(index, found))

    def is_dir(self, path: str) -> bool:
        return self._index.find_dir(path.strip("/")) >= 0

    def listdir(self, path: str = "") -> list[str]:
        """Names directly inside directory *path* (sorted); `FileNotFoundError`/`NotADirectoryError`."""
        path = path.strip("/")
        index = self._index
        if index.find_file(path) >= 0:
            raise NotADirectoryError(path)
        directory = index.find_dir(path)
        if directory < 0:
            raise FileNotFoundError(path)
        return sorted([*index.dir_children[directory], *(index.file_name(f) for f in index.dir_files(directory))])

    def walk(self, top: str = "") -> Iterator[tuple[str, list[str], list[str]]]:
        """``(directory, subdirectory names, file names)`` for *top* and every directory below it,
        top-down and sorted, like `os.walk` (a loop, so any depth works)."""
        index = self._index
        top = top.strip("/")
        start = index.find_dir(top)
        if start < 0:
            raise NotADirectoryError(top) if index.find_file(top) >= 0 else FileNotFoundError(top)
        stack = [(top, start)]
        all_children, dir_files, file_name = index.dir_children, index.dir_files, index.file_name
        while stack:
            path, directory = stack.pop()
            children = all_children[directory]
            names = [file_name(f) for f in dir_files(directory)]
            if len(names) > 1:
                names.sort()
            if not children:  # a leaf: the usual directory, and the cheap case
                yield path, [], names
                continue
            subdirs = sorted(children)
            yield path, subdirs, names
            prefix = f"{path}/" if path else ""
            stack.extend([(prefix + name, children[name]) for name in reversed(subdirs)])

    def walk_files(self) -> Iterator[ManifestFile]:
        """Every file, sorted by path."""
        index = self._index
        for path, f in sorted((index.file_path(f), f) for f in range(len(index.file_dir))):
            yield ManifestFile(path, FileSegments(index, f))
