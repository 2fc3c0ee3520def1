"""Arvados manifest text: parse, list files, normalise, strip, and the portable data hash."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping

from .errors import KeepError, LocatorError
from .locator import EMPTY_BLOCK, Locator

__all__ = ["Manifest", "ManifestError", "ManifestFile", "Segment", "escape_name", "unescape_name"]

_ESCAPE = re.compile(r"[\\:\000-\040]")
_UNESCAPE = re.compile(r"\\([0-3][0-7][0-7])")
# A name is anything but a space: not \S, which also refuses NBSP and other Unicode spaces that
# escape_name leaves as they are (so our own manifests failed to parse). The Go SDK splits on " "
# alone, as we do; the Arvados Python SDK splits on \s and cannot read such names.
_SEGMENT = re.compile(r"(0|[1-9][0-9]*):(0|[1-9][0-9]*):([^ ]+)\Z")
_LOCATOR_START = re.compile(r"[0-9a-f]{32}\+")


class ManifestError(KeepError, ValueError):
    """Manifest text is not valid (the message names the line and token)."""


def escape_name(name: str) -> str:
    """Escape a stream or file name as Arvados does: ``\\``, ``:``, and control/space as octal."""
    return _ESCAPE.sub(lambda m: f"\\{ord(m.group(0)):03o}", name)


def unescape_name(name: str) -> str:
    """Undo `escape_name` (``\\040`` -> space, and so on)."""
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 8)), name)


@dataclasses.dataclass(frozen=True)
class Segment:
    """``length`` bytes of one block, starting ``offset`` bytes into it."""

    locator: Locator
    offset: int
    length: int


@dataclasses.dataclass(frozen=True)
class ManifestFile:
    """One file: its path inside the dataset (``dir/name``) and the block ranges that make it."""

    path: str
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _check_path(path: str, where: str) -> str:
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"{where}: invalid path {path!r} (empty, '.' or '..' component)")
    if "\x00" in path:
        raise ManifestError(f"{where}: path {path!r} contains NUL")
    return path


class Manifest:
    """A parsed manifest: files (path -> `ManifestFile`) and directories, in manifest order.

    ``str(manifest)`` is the exact text it was parsed from; `normalized_text()` is the
    Arvados normal form, and `portable_data_hash()` matches Arvados for the same content.
    """

    def __init__(self, files: Mapping[str, ManifestFile] | None = None,
                 directories: Iterable[str] = (), *, text: str | None = None) -> None:
        self._files: dict[str, ManifestFile] = dict(files or {})
        for path in self._files:
            _check_path(path, "file")
        dirs: set[str] = set()
        # Every ancestor is a directory: of a file, and of a directory too (the normal form has
        # no line for a directory that holds only directories, e.g. "./a/b" alone implies "a").
        for path in [*(p.rsplit("/", 1)[0] for p in self._files if "/" in p), *directories]:
            parts = _check_path(path, "directory").split("/")
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        conflicts = dirs & set(self._files)
        if conflicts:
            raise ManifestError(f"{sorted(conflicts)[0]!r} is both a file and a directory")
        self._dirs = dirs
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
        if text and not text.endswith("\n"):
            raise ManifestError("manifest text must end with a newline")
        files: dict[str, list[Segment]] = {}
        dirs: set[str] = set()
        for line_no, line in enumerate(text.split("\n")[:-1], start=1):
            cls._parse_stream(line, line_no, files, dirs)
        built = {p: ManifestFile(p, tuple(segs)) for p, segs in files.items()}
        return cls(built, dirs, text=text)

    @staticmethod
    def _parse_stream(line: str, line_no: int, files: dict[str, list[Segment]], dirs: set[str]) -> None:
        where = f"manifest line {line_no}"
        tokens = line.split(" ")
        if "" in tokens:
            raise ManifestError(f"{where}: want '<stream> <locator>... <pos:len:name>...' separated by single spaces")
        stream = unescape_name(tokens[0])
        if stream != "." and not stream.startswith("./"):
            raise ManifestError(f"{where}: stream name {tokens[0]!r} must be '.' or start with './'")
        stream_path = "" if stream == "." else _check_path(stream[2:], where)
        if stream_path:
            dirs.add(stream_path)
        blocks: list[Locator] = []
        starts: list[int] = []
        total = 0
        i = 1
        while i < len(tokens) and _LOCATOR_START.match(tokens[i]):
            try:
                loc = Locator.parse(tokens[i])
            except LocatorError as exc:
                raise ManifestError(f"{where}: {exc}") from None
            blocks.append(loc)
            starts.append(total)
            total += loc.size
            i += 1
        if not blocks:
            raise ManifestError(f"{where}: stream {tokens[0]!r} lists no block locator")
        if i == len(tokens):
            raise ManifestError(f"{where}: stream {tokens[0]!r} has no file segment")
        for token in tokens[i:]:
            m = _SEGMENT.match(token)
            if not m:
                raise ManifestError(f"{where}: {token!r} is not a pos:len:name file segment")
            if len(m.group(1)) > 20 or len(m.group(2)) > 20:  # int() refuses over 4300 digits anyway
                raise ManifestError(f"{where}: segment {token[:60]!r}... runs past the stream's {total} bytes")
            pos, length, raw_name = int(m.group(1)), int(m.group(2)), unescape_name(m.group(3))
            if pos + length > total:
                raise ManifestError(f"{where}: segment {token!r} runs past the stream's {total} bytes")
            full = f"{stream_path}/{raw_name}" if stream_path else raw_name
            if raw_name == "." or raw_name.endswith("/."):
                # Arvados' placeholder that keeps an empty directory.
                directory = full[:-2] if full.endswith("/.") else stream_path
                if directory:
                    dirs.add(_check_path(directory, where))
                continue
            _check_path(full, where)
            segs = files.setdefault(full, [])
            segs.extend(_ranges(blocks, starts, pos, length))

    @classmethod
    def from_files(cls, files: Mapping[str, Iterable[Segment]], directories: Iterable[str] = ()) -> "Manifest":
        """Build a manifest (normal form) from file paths and their segments."""
        built = {}
        for path, segs in files.items():
            _check_path(path, "file")
            built[path] = ManifestFile(path, tuple(segs))
        dirs = [_check_path(d, "directory") for d in directories]
        manifest = cls(built, dirs)
        manifest._text = manifest.normalized_text()
        return manifest

    # -- text ---------------------------------------------------------------------------

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<Manifest {len(self._files)} files, {self.total_size} bytes>"

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
        out: list[str] = []
        self._normalize_dir("", strip, out)
        return "".join(out)

    def _normalize_dir(self, path: str, strip: bool, out: list[str]) -> None:
        prefix = f"{path}/" if path else ""
        here = sorted(p for p in self._files if p.startswith(prefix) and "/" not in p[len(prefix):])
        subdirs = sorted({d[len(prefix):].split("/")[0] for d in self._dirs if d.startswith(prefix) and d != path})
        stream_name = f"./{path}" if path else "."
        if not here and not subdirs:
            if path:
                out.append(f"{escape_name(stream_name)} {EMPTY_BLOCK} 0:0:\\056\n")
            return
        if here:
            out.append(" ".join(_normalize_stream(stream_name, {p[len(prefix):]: self._files[p] for p in here},
                                                  strip)) + "\n")
        for name in subdirs:
            self._normalize_dir(prefix + name, strip, out)

    def stripped_text(self) -> str:
        """The manifest text with every hint but the size removed from block locators."""
        lines = []
        for line in self.text.split("\n")[:-1]:
            tokens = line.split(" ")
            tokens = [tokens[0]] + [str(Locator.parse(t).bare()) if _LOCATOR_START.match(t) else t for t in tokens[1:]]
            lines.append(" ".join(tokens) + "\n")
        return "".join(lines)

    def portable_data_hash(self) -> str:
        """``md5+size`` of the normalised, stripped text: Arvados' portable data hash."""
        data = self.normalized_text(strip=True).encode("utf-8")
        return f"{hashlib.md5(data).hexdigest()}+{len(data)}"

    # -- listing --------------------------------------------------------------------------

    @property
    def files(self) -> Mapping[str, ManifestFile]:
        return self._files

    @property
    def directories(self) -> frozenset[str]:
        return frozenset(self._dirs)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self._files.values())

    def blocks(self) -> list[Locator]:
        """Every distinct block the manifest refers to, in first-use order."""
        seen: dict[str, Locator] = {}
        for f in self._files.values():
            for s in f.segments:
                seen.setdefault(s.locator.md5 + "+" + str(s.locator.size), s.locator)
        return list(seen.values())

    def file(self, path: str) -> ManifestFile:
        """The file at *path*; `FileNotFoundError` if there is none (`IsADirectoryError` for a dir)."""
        path = path.strip("/")
        found = self._files.get(path)
        if found is None:
            if path == "" or path in self._dirs:
                raise IsADirectoryError(path or "/")
            raise FileNotFoundError(path)
        return found

    def is_dir(self, path: str) -> bool:
        path = path.strip("/")
        return path == "" or path in self._dirs

    def listdir(self, path: str = "") -> list[str]:
        """Names directly inside directory *path* (sorted); `FileNotFoundError`/`NotADirectoryError`."""
        path = path.strip("/")
        if path in self._files:
            raise NotADirectoryError(path)
        if not self.is_dir(path):
            raise FileNotFoundError(path)
        prefix = f"{path}/" if path else ""
        names = {p[len(prefix):].split("/")[0] for p in (*self._files, *self._dirs)
                 if p.startswith(prefix) and p != path}
        return sorted(names)

    def walk_files(self) -> Iterator[ManifestFile]:
        """Every file, sorted by path."""
        for path in sorted(self._files):
            yield self._files[path]


def _ranges(blocks: list[Locator], starts: list[int], pos: int, length: int) -> Iterator[Segment]:
    """Split stream range [pos, pos+length) into per-block segments."""
    if length == 0:
        return
    i = bisect.bisect_right(starts, pos) - 1
    end = pos + length
    while pos < end:
        loc = blocks[i]
        block_end = starts[i] + loc.size
        if pos >= block_end:
            i += 1
            continue
        take = min(end, block_end) - pos
        yield Segment(loc, pos - starts[i], take)
        pos += take
        i += 1


def _normalize_stream(stream_name: str, files: Mapping[str, ManifestFile], strip: bool) -> list[str]:
    """Tokens of one normalised stream, as Arvados' ``normalize_stream`` produces them."""
    tokens = [escape_name(stream_name)]
    offsets: dict[str, int] = {}
    stream_offset = 0
    names = sorted(files)

    def key(loc: Locator) -> str:
        return str(loc.bare() if strip else loc)

    for name in names:
        for seg in files[name].segments:
            k = key(seg.locator)
            if k not in offsets:
                tokens.append(k)
                offsets[k] = stream_offset
                stream_offset += seg.locator.size
    if len(tokens) == 1:
        tokens.append(EMPTY_BLOCK)
    for name in names:
        escaped = escape_name(name)
        span: list[int] | None = None
        for seg in files[name].segments:
            start = offsets[key(seg.locator)] + seg.offset
            if span is not None and start == span[1]:
                span[1] += seg.length
                continue
            if span is not None:
                tokens.append(f"{span[0]}:{span[1] - span[0]}:{escaped}")
            span = [start, start + seg.length]
        if span is not None:
            tokens.append(f"{span[0]}:{span[1] - span[0]}:{escaped}")
        else:
            tokens.append(f"0:0:{escaped}")
    return tokens
