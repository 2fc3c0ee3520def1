"""The compact, text-backed index behind `Manifest`: arrays of offsets, no per-file objects."""

from __future__ import annotations

import bisect
import re
from array import array

from ..errors import KeepError, LocatorError
from ..locator import MAX_BLOCK_SIZE, Locator

__all__ = ["ROOT", "ManifestError", "ManifestIndex", "escape_name", "unescape_name"]

ROOT = 0  # directory id of the dataset's root

_ESCAPE = re.compile(r"[\\:\000-\040]")
_UNESCAPE = re.compile(r"\\([0-3][0-7][0-7])")
# A name is anything but a space: not \S, which also refuses NBSP and other Unicode spaces that
# escape_name leaves as they are (so our own manifests failed to parse). The Go SDK splits on " "
# alone, as we do; the Arvados Python SDK splits on \s and cannot read such names.
_SEGMENT_AT = re.compile(r"(0|[1-9][0-9]*):(0|[1-9][0-9]*):([^ \n]+)")
_LOCATOR_START = re.compile(r"[0-9a-f]{32}\+")
# The usual locator (bare, or with one permission hint) is checked here without building a Locator;
# anything else goes through Locator.parse, which gives the error message.
_PLAIN_LOCATOR = re.compile(r"[0-9a-f]{32}\+(0|[1-9][0-9]{0,7})(?:\+A[0-9a-f]{40}@[0-9a-f]{8})?\Z")
_SIZE_HINT = re.compile(r"[0-9a-f]{32}\+([0-9]+)")
_TOKEN = re.compile(r"[^ \n]*")
_BAD_COMPONENTS = ("", ".", "..")
_BAD_SET = frozenset(_BAD_COMPONENTS)


class ManifestError(KeepError, ValueError):
    """Manifest text is not valid (the message names the line and token)."""


def escape_name(name: str) -> str:
    """Escape a stream or file name as Arvados does: ``\\``, ``:``, and control/space as octal."""
    if _ESCAPE.search(name) is None:  # the usual case, and cheaper than sub() over every name
        return name
    return _ESCAPE.sub(lambda m: f"\\{ord(m.group(0)):03o}", name)


def unescape_name(name: str) -> str:
    """Undo `escape_name` (``\\040`` -> space, and so on)."""
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 8)), name) if "\\" in name else name


def _invalid(where: str, path: str) -> ManifestError:
    if "\x00" in path:
        return ManifestError(f"{where}: path {path!r} contains NUL")
    return ManifestError(f"{where}: invalid path {path!r} (empty, '.' or '..' component)")


class ManifestIndex:
    """Manifest text with the offsets of its tokens in flat arrays.

    Streams, blocks and file segments are rows in ``array`` columns that point into the text, so
    memory is a small multiple of the text whatever its shape: a segment is one token offset, and
    the blocks it spans are found by bisecting its stream's cumulative block ends. Zero-size
    blocks take no row (they hold no bytes). Directories are a tree (``dir_children[id]`` maps a
    name to a child id), so deep paths cost their depth, not their length squared. Files are keyed
    by ``(directory id, name)`` in an open-addressing table of file ids.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        idx = "I" if len(text) < 2**32 else "q"
        self.st_dir = array(idx)      # per stream: directory id
        self.st_blk = array(idx)      # per stream: first row in the block columns (+ a sentinel)
        self.blk_tok = array(idx)     # per non-empty block: offset of its locator token
        self.blk_end = array("q")     # per block: where it ends in its stream
        self.blk_size = array("I")    # per block: its size (<= 64 MiB)
        self.seg_tok = array(idx)     # per segment token: its offset
        self.seg_stream = array(idx)  # per segment token: its stream
        self.file_dir = array(idx)    # per file: directory id
        self.file_tok = array(idx)    # per file: offset of its first segment token
        self.file_hash = array("I")   # per file: low bits of its key's hash, to skip most compares
        self.dir_parent = array(idx, [0])
        self.dir_name: list[str] = [""]
        self.dir_children: list[dict[str, int]] = [{}]
        self.file_seg_start: array[int] | None = None  # files' token rows, when a file has several
        self.file_segs: array[int] | None = None
        self.total_size = 0
        self._table = array(idx, bytes(array(idx).itemsize * (int(text.count(" ") * 1.5) + 8)))
        self._dir_paths: dict[int, str] = {ROOT: ""}
        self._last_dir = ("", ROOT)
        self._dir_files: tuple[array[int], array[int]] | None = None
        self._parse(idx)

    # -- parsing ------------------------------------------------------------------------

    def _parse(self, idx: str) -> None:
        text = self.text
        if text and not text.endswith("\n"):
            raise ManifestError("manifest text must end with a newline")
        seg_file = array(idx)
        pos, line_no, end = 0, 0, len(text)
        while pos < end:
            line_no += 1
            eol = text.find("\n", pos)
            if eol == pos or text[pos] == " " or text[eol - 1] == " " or text.find("  ", pos, eol) != -1:
                raise ManifestError(f"manifest line {line_no}: want '<stream> <locator>... <pos:len:name>...'"
                                    " separated by single spaces")
            pos = self._parse_stream(pos, eol, line_no, seg_file)
        self.st_blk.append(len(self.blk_tok))
        if len(seg_file) != len(self.file_dir):
            self._group_segments(seg_file, idx)

    def _parse_stream(self, pos: int, eol: int, line_no: int, seg_file: array[int]) -> int:
        text = self.text
        where = f"manifest line {line_no}"
        sp = text.find(" ", pos, eol)
        first = text[pos:eol if sp == -1 else sp]
        stream = unescape_name(first)
        if stream == ".":
            directory = ROOT
        elif stream.startswith("./"):
            directory = self._walk(ROOT, stream[2:].split("/"), where, stream[2:])
        else:
            raise ManifestError(f"{where}: stream name {first!r} must be '.' or start with './'")
        stream_id = len(self.st_dir)
        self.st_dir.append(directory)
        self.st_blk.append(len(self.blk_tok))
        total, blocks = 0, 0
        token = ""
        while sp != -1:
            pos = sp + 1
            sp = text.find(" ", pos, eol)
            token = text[pos:eol if sp == -1 else sp]
            if not _LOCATOR_START.match(token):
                break
            m = _PLAIN_LOCATOR.match(token)
            size = int(m.group(1)) if m else MAX_BLOCK_SIZE + 1
            if size > MAX_BLOCK_SIZE:
                try:
                    size = Locator.parse(token).size
                except LocatorError as exc:
                    raise ManifestError(f"{where}: {exc}") from None
            blocks += 1
            if size:
                total += size
                self.blk_tok.append(pos)
                self.blk_end.append(total)
                self.blk_size.append(size)
            token = ""
        if not blocks:
            raise ManifestError(f"{where}: stream {first!r} lists no block locator")
        if not token:
            raise ManifestError(f"{where}: stream {first!r} has no file segment")
        # pos is where the first segment token starts
        while True:
            pos = self._parse_segment(pos, eol, total, directory, stream_id, where, seg_file)
            if pos == eol:
                return eol + 1
            pos += 1

    def _parse_segment(self, pos: int, eol: int, total: int, directory: int, stream_id: int, where: str,
                       seg_file: array[int]) -> int:
        """Record the ``pos:len:name`` token at *pos*; return where it ends."""
        m = _SEGMENT_AT.match(self.text, pos, eol)
        if m is None:
            token = self.token(pos)
            raise ManifestError(f"{where}: {token!r} is not a pos:len:name file segment")
        if len(m.group(1)) > 20 or len(m.group(2)) > 20:  # int() refuses over 4300 digits anyway
            raise ManifestError(f"{where}: segment {m.group()[:60]!r}... runs past the stream's {total} bytes")
        start, length, raw = int(m.group(1)), int(m.group(2)), m.group(3)
        if start + length > total:
            raise ManifestError(f"{where}: segment {m.group()!r} runs past the stream's {total} bytes")
        if "\\" in raw:
            raw = unescape_name(raw)
        if raw == "." or raw.endswith("/."):
            # Arvados' placeholder that keeps an empty directory ("." is the stream's own, and "/."
            # in the root stream names the root, as before).
            if raw != "." and (raw != "/." or directory != ROOT):
                self._walk(directory, raw[:-2].split("/"), where, raw[:-2])
            return m.end()
        name = raw.rsplit("/", 1)[-1] if "/" in raw else raw
        if name in _BAD_COMPONENTS or "\x00" in name:
            raise _invalid(where, self.dir_path(directory, raw))
        if name is not raw:
            directory = self._walk(directory, raw.split("/")[:-1], where, raw)
        if name in self.dir_children[directory]:
            raise ManifestError(f"{self.dir_path(directory, name)!r} is both a file and a directory")
        slot, found = self._probe(directory, name)
        if found < 0:
            found = len(self.file_dir)
            self.file_dir.append(directory)
            self.file_tok.append(pos)
            self.file_hash.append(_key_hash(directory, name) & 0xFFFFFFFF)
            self._table[slot] = found + 1
        self.seg_tok.append(pos)
        self.seg_stream.append(stream_id)
        seg_file.append(found)
        self.total_size += length
        return m.end()

    def _walk(self, directory: int, parts: list[str], where: str, shown: str) -> int:
        """The id of *parts* below *directory*, creating directories on the way (all checked first,
        so a bad path creates none)."""
        if _BAD_SET.intersection(parts) or any("\x00" in part for part in parts):
            raise _invalid(where, self.dir_path(directory, shown))
        for part in parts:
            child = self.dir_children[directory].get(part)
            if child is None:
                if self._probe(directory, part)[1] >= 0:
                    raise ManifestError(f"{self.dir_path(directory, part)!r} is both a file and a directory")
                child = len(self.dir_name)
                self.dir_parent.append(directory)
                self.dir_name.append(part)
                self.dir_children.append({})
                self.dir_children[directory][part] = child
            directory = child
        return directory

    def _group_segments(self, seg_file: array[int], idx: str) -> None:
        """Order segment rows by file (a counting sort), for files named by several tokens."""
        counts = array(idx, bytes(array(idx).itemsize * (len(self.file_dir) + 1)))
        for f in seg_file:
            counts[f + 1] += 1
        for i in range(1, len(counts)):
            counts[i] += counts[i - 1]
        place = array(idx, counts)
        segs = array(idx, bytes(array(idx).itemsize * len(seg_file)))
        for row, f in enumerate(seg_file):
            segs[place[f]] = row
            place[f] += 1
        self.file_seg_start, self.file_segs = counts, segs

    # -- lookups --------------------------------------------------------------------------

    def _probe(self, directory: int, name: str) -> tuple[int, int]:
        """``(slot, file id)`` of *name* in *directory*; file id -1 (and a free slot) if absent."""
        table, hashes = self._table, self.file_hash
        size = len(table)
        h = _key_hash(directory, name)
        short = h & 0xFFFFFFFF
        slot = h % size
        while True:
            value = table[slot]
            if value == 0:
                return slot, -1
            f = value - 1
            if hashes[f] == short and self.file_dir[f] == directory and self.file_name(f) == name:
                return slot, f
            slot = slot + 1 if slot + 1 < size else 0

    def token(self, pos: int) -> str:
        match = _TOKEN.match(self.text, pos)
        assert match is not None  # [^ \n]* matches everywhere
        return match.group()

    def segment(self, row: int) -> tuple[int, int, str]:
        """``(position in stream, length, unescaped name)`` of segment token *row*."""
        m = _SEGMENT_AT.match(self.text, self.seg_tok[row])
        assert m is not None  # checked when parsed
        return int(m.group(1)), int(m.group(2)), unescape_name(m.group(3))

    def file_name(self, file: int) -> str:
        m = _SEGMENT_AT.match(self.text, self.file_tok[file])
        assert m is not None
        name = m.group(3)
        if "\\" in name:
            name = unescape_name(name)
        return name.rsplit("/", 1)[-1] if "/" in name else name

    def file_rows(self, file: int) -> range | array[int]:
        """The segment token rows of *file*, in manifest order."""
        if self.file_seg_start is None or self.file_segs is None:
            return range(file, file + 1)
        return self.file_segs[self.file_seg_start[file]:self.file_seg_start[file + 1]]

    def dir_path(self, directory: int, leaf: str = "") -> str:
        """The path of *directory* (``""`` for the root), with ``/leaf`` added when given."""
        path = self._dir_paths.get(directory)
        if path is None:
            names = []
            d = directory
            while d != ROOT and d not in self._dir_paths:
                names.append(self.dir_name[d])
                d = self.dir_parent[d]
            names.reverse()
            path = "/".join([self._dir_paths[d], *names] if d != ROOT else names)
            self._dir_paths[directory] = path
        if leaf:
            return f"{path}/{leaf}" if path else leaf
        return path

    def file_path(self, file: int) -> str:
        return self.dir_path(self.file_dir[file], self.file_name(file))

    def find_dir(self, path: str) -> int:
        """The id of directory *path* (already stripped of ``/``), or -1."""
        if not path:
            return ROOT
        head, _, last = path.rpartition("/")
        parent = self._find_parent(head)
        return -1 if parent < 0 else self.dir_children[parent].get(last, -1)

    def _find_parent(self, path: str) -> int:
        # Look-ups come grouped by directory (listing, reading a tree), so remember the last one.
        # Read the pair once: another thread may replace it between two reads.
        cached_path, cached_id = self._last_dir
        if path == cached_path:
            return cached_id
        directory = ROOT
        if path:
            for part in path.split("/"):
                found = self.dir_children[directory].get(part)
                if found is None:
                    return -1
                directory = found
        self._last_dir = (path, directory)
        return directory

    def find_file(self, path: str) -> int:
        """The id of file *path*, or -1."""
        head, _, name = path.rpartition("/")
        directory = self._find_parent(head)
        return -1 if directory < 0 or not name else self._probe(directory, name)[1]

    def dir_files(self, directory: int) -> array[int]:
        """The files directly in *directory*, in manifest order (grouped once, on first use)."""
        if self._dir_files is None:
            idx = self.file_dir.typecode
            counts = array(idx, bytes(array(idx).itemsize * (len(self.dir_name) + 1)))
            for d in self.file_dir:
                counts[d + 1] += 1
            for i in range(1, len(counts)):
                counts[i] += counts[i - 1]
            place = array(idx, counts)
            files = array(idx, bytes(array(idx).itemsize * len(self.file_dir)))
            for f, d in enumerate(self.file_dir):
                files[place[d]] = f
                place[d] += 1
            self._dir_files = (counts, files)
        counts, files = self._dir_files
        return files[counts[directory]:counts[directory + 1]]

    # -- blocks ---------------------------------------------------------------------------

    def file_size(self, file: int) -> int:
        """The file's size, from its tokens alone."""
        total = 0
        for row in self.file_rows(file):
            m = _SEGMENT_AT.match(self.text, self.seg_tok[row])
            assert m is not None
            total += int(m.group(2))
        return total

    def block_span(self, row: int) -> tuple[int, int, int, int]:
        """``(first block, last block, start, end)`` of segment token *row* (stream positions);
        first > last when the segment is empty."""
        m = _SEGMENT_AT.match(self.text, self.seg_tok[row])
        assert m is not None  # checked when parsed
        start, length = int(m.group(1)), int(m.group(2))
        stream = self.seg_stream[row]
        lo, hi = self.st_blk[stream], self.st_blk[stream + 1]
        if length == 0:
            return lo, lo - 1, start, start
        first = bisect.bisect_right(self.blk_end, start, lo, hi)
        last = bisect.bisect_left(self.blk_end, start + length, first, hi)
        return first, last, start, start + length

    def locator_text(self, block: int, *, strip: bool = False) -> str:
        token = self.token(self.blk_tok[block])
        if strip:
            m = _SIZE_HINT.match(token)
            assert m is not None
            return m.group()
        return token

    def locator(self, block: int) -> Locator:
        return Locator.parse(self.token(self.blk_tok[block]))


def _key_hash(directory: int, name: str) -> int:
    """The hash of a file's key; cheaper than hashing a ``(directory, name)`` tuple."""
    return hash(name) ^ (directory * 0x9E3779B1)
