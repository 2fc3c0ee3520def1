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
_NAME_AT = re.compile(r"[0-9]+:[0-9]+:([^ \n]+)")  # a segment token already checked: its name
_LOCATOR_START = re.compile(r"[0-9a-f]{32}\+")
# The usual locator (bare, or with one permission hint) is checked here without building a Locator;
# anything else goes through Locator.parse, which gives the error message.
_PLAIN_LOCATOR = re.compile(r"[0-9a-f]{32}\+(0|[1-9][0-9]{0,7})(?:\+A[0-9a-f]{40}@[0-9a-f]{8})?\Z")
_SIZE_HINT = re.compile(r"[0-9a-f]{32}\+([0-9]+)")
_TOKEN = re.compile(r"[^ \n]*")
_BAD_SET = frozenset(("", ".", ".."))


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
        self.file_bytes = array("q")  # per file: its size
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
        # Each directory's files, as a range of file ids, while they come grouped by directory (as
        # in normal form, one stream per directory); else grouped on first use by dir_files.
        self.dir_file_lo = array(idx, [0])
        self.dir_file_hi = array(idx, [0])
        self._files_by_dir = True
        self._parse(idx)

    # -- parsing ------------------------------------------------------------------------

    def _parse(self, idx: str) -> None:
        """Index every line of the text: its stream's directory, its blocks, its file segments.

        The hot loop of parsing, in one function so that everything it touches per token is a
        local: one pass over the tokens, regular expressions matched in place (no token copied
        unless it is odd), the file table probed inline (as `_probe` does).
        """
        text = self.text
        if text and not text.endswith("\n"):
            raise ManifestError("manifest text must end with a newline")
        find = text.find
        plain, starts_like, seg_at = _PLAIN_LOCATOR.match, _LOCATOR_START.match, _SEGMENT_AT.match
        st_dir, st_blk = self.st_dir.append, self.st_blk.append
        blk_tok, blk_end, blk_size = self.blk_tok.append, self.blk_end.append, self.blk_size.append
        seg_file = array(idx)
        seg_tok, seg_stream, seg_of = self.seg_tok.append, self.seg_stream.append, seg_file.append
        table, hashes, file_dir, file_bytes = self._table, self.file_hash, self.file_dir, self.file_bytes
        file_tok, dir_lo, dir_hi = self.file_tok.append, self.dir_file_lo, self.dir_file_hi
        root_children = self.dir_children[ROOT]
        slots = len(table)
        rows = 0  # non-empty blocks so far
        last_dir = ROOT  # the directory of the last new file: files grouped by directory form runs
        total_size = 0
        pos, line_no, end, stream_id = 0, 0, len(text), 0
        while pos < end:
            line_no += 1
            eol = find("\n", pos)
            if eol == pos or text[pos] == " " or text[eol - 1] == " " or find("  ", pos, eol) != -1:
                raise ManifestError(f"manifest line {line_no}: want '<stream> <locator>... <pos:len:name>...'"
                                    " separated by single spaces")
            # the stream name: its directory
            sp = find(" ", pos, eol)
            first = text[pos:eol if sp == -1 else sp]
            stream = unescape_name(first) if "\\" in first else first
            if stream == ".":
                directory = ROOT
            elif stream.startswith("./"):
                rest = stream[2:]
                directory = root_children.get(rest, -1) if "/" not in rest else -1  # checked when made
                if directory < 0:
                    directory = self._walk(ROOT, rest.split("/"), line_no, rest)
            else:
                raise ManifestError(f"manifest line {line_no}: stream name {first!r} must be '.' or start with './'")
            st_dir(directory)
            st_blk(rows)
            # its block locators: the usual ones checked by one regular expression, others parsed
            total, blocks, segment_next = 0, 0, False
            while sp != -1:
                pos = sp + 1
                sp = find(" ", pos, eol)
                stop = eol if sp == -1 else sp
                m = plain(text, pos, stop)
                if m is not None:
                    size = int(m[1])
                elif starts_like(text, pos, stop):
                    size = MAX_BLOCK_SIZE + 1
                else:
                    segment_next = True
                    break
                if size > MAX_BLOCK_SIZE:
                    try:
                        size = Locator.parse(text[pos:stop]).size
                    except LocatorError as exc:
                        raise ManifestError(f"manifest line {line_no}: {exc}") from None
                blocks += 1
                if size:  # an empty block holds no bytes: no row
                    total += size
                    rows += 1
                    blk_tok(pos)
                    blk_end(total)
                    blk_size(size)
            if not blocks:
                raise ManifestError(f"manifest line {line_no}: stream {first!r} lists no block locator")
            if not segment_next:
                raise ManifestError(f"manifest line {line_no}: stream {first!r} has no file segment")
            # its file segments, from pos on
            while True:
                m = seg_at(text, pos, eol)
                if m is None:
                    raise ManifestError(f"manifest line {line_no}: {self.token(pos)!r} is not a pos:len:name "
                                        "file segment")
                a, b, raw = m.groups()
                if len(a) > 20 or len(b) > 20:  # int() refuses over 4300 digits anyway
                    raise ManifestError(f"manifest line {line_no}: segment {m.group()[:60]!r}... runs past the "
                                        f"stream's {total} bytes")
                length = int(b)
                if int(a) + length > total:
                    raise ManifestError(f"manifest line {line_no}: segment {m.group()!r} runs past the stream's "
                                        f"{total} bytes")
                if "\\" in raw:
                    raw = unescape_name(raw)
                here = directory
                if "/" in raw or raw == ".":
                    if raw == "." or raw.endswith("/."):
                        # Arvados' placeholder that keeps an empty directory ("." is the stream's own,
                        # and "/." in the root stream names the root, as before).
                        if raw != "." and (raw != "/." or directory != ROOT):
                            self._walk(directory, raw[:-2].split("/"), line_no, raw[:-2])
                        pos = m.end()
                        if pos == eol:
                            break
                        pos += 1
                        continue
                    name = raw.rsplit("/", 1)[-1]
                    if name in _BAD_SET or "\x00" in name:
                        raise _invalid(f"manifest line {line_no}", self.dir_path(directory, raw))
                    here = self._walk(directory, raw.split("/")[:-1], line_no, raw)
                else:
                    name = raw
                    if name == ".." or "\x00" in name:
                        raise _invalid(f"manifest line {line_no}", self.dir_path(directory, raw))
                h = hash(name) ^ (here * 0x9E3779B1)
                short = h & 0xFFFFFFFF
                slot = h % slots
                while True:
                    value = table[slot]
                    if value == 0:  # a new file
                        found = len(file_dir)
                        file_dir.append(here)
                        file_tok(pos)
                        hashes.append(short)
                        file_bytes.append(length)
                        table[slot] = found + 1
                        if here != last_dir:  # a new run of files: the last directory's ends here
                            dir_hi[last_dir] = found
                            if dir_hi[here]:  # this directory had files before
                                self._files_by_dir = False
                            dir_lo[here] = found
                            last_dir = here
                        break
                    found = value - 1
                    if hashes[found] == short and file_dir[found] == here and self.file_name(found) == name:
                        file_bytes[found] += length  # one more piece of a file named before
                        break
                    slot = slot + 1 if slot + 1 < slots else 0
                seg_tok(pos)
                seg_stream(stream_id)
                seg_of(found)
                total_size += length
                pos = m.end()
                if pos == eol:
                    break
                pos += 1
            stream_id += 1
            pos = eol + 1
        st_blk(rows)
        dir_hi[last_dir] = len(file_dir)
        self.total_size = total_size
        self._check_clashes()
        if len(seg_file) != len(file_dir):
            self._group_segments(seg_file, idx)

    def _walk(self, directory: int, parts: list[str], line_no: int, shown: str) -> int:
        """The id of *parts* below *directory*, creating directories on the way (all checked first,
        so a bad path creates none)."""
        if not _BAD_SET.isdisjoint(parts) or "\x00" in shown:
            raise _invalid(f"manifest line {line_no}", self.dir_path(directory, shown))
        children = self.dir_children
        for part in parts:
            child = children[directory].get(part)
            if child is None:
                child = len(self.dir_name)
                self.dir_file_lo.append(0)
                self.dir_file_hi.append(0)
                self.dir_parent.append(directory)
                self.dir_name.append(part)
                children.append({})
                children[directory][part] = child
            directory = child
        return directory

    def _check_clashes(self) -> None:
        """Refuse a name that is both a file and a directory (checked once, after parsing: only the
        directories that hold files need probing)."""
        for parent in set(self.file_dir).intersection(self.dir_parent):  # holding files and directories
            for name in self.dir_children[parent]:
                if self._probe(parent, name) >= 0:
                    raise ManifestError(f"{self.dir_path(parent, name)!r} is both a file and a directory")

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

    def _probe(self, directory: int, name: str) -> int:
        """The id of file *name* in *directory*, or -1."""
        table = self._table
        size = len(table)
        h = hash(name) ^ (directory * 0x9E3779B1)  # keep in step with _parse
        short = h & 0xFFFFFFFF
        slot = h % size
        while True:
            value = table[slot]
            if value == 0:
                return -1
            f = value - 1
            if self.file_hash[f] == short and self.file_dir[f] == directory and self.file_name(f) == name:
                return f
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
        m = _NAME_AT.match(self.text, self.file_tok[file])
        assert m is not None  # checked when parsed
        name = m[1]
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
        cached_path, directory = self._last_dir  # read once: another thread may replace it
        if head != cached_path:
            directory = self._find_parent(head)
            if directory < 0:
                return -1
        return self._probe(directory, name) if name else -1

    def dir_files(self, directory: int) -> range | array[int]:
        """The files directly in *directory*, in manifest order (grouped once, on first use, unless
        the files already come grouped by directory, as in normal form: then a range)."""
        if self._files_by_dir:
            return range(self.dir_file_lo[directory], self.dir_file_hi[directory])
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
        """The file's size (summed over its tokens when parsed)."""
        return self.file_bytes[file]

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

