"""The Arvados normal form and the distinct blocks of a `ManifestIndex`, in time linear in text and output."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..locator import EMPTY_BLOCK, Locator
from .manifest_index import ROOT, ManifestIndex, escape_name

__all__ = ["distinct_blocks", "normalized_text", "segments_normal_text"]


def _find(links: dict[int, int], x: int) -> int:
    """Follow *links* from *x* to the first index that has none, pointing the path straight there.

    A link ``x -> y`` means "every index in [x, y) is done", so a block that many segments span is
    stepped over once per stream, not once per segment (union-find with path compression).
    """
    root = x
    while root in links:
        root = links[root]
    while x != root:
        links[x], x = root, links[x]
    return root


def normalized_text(index: ManifestIndex, strip: bool = False) -> str:
    """Arvados' normal form: one stream per directory, depth first in name order, files sorted."""
    out: list[str] = []
    names: list[str] = []  # escaped names of the directories down to the current one
    stack = [(ROOT, 0)]
    while stack:  # a loop, not recursion: any depth works
        directory, depth = stack.pop()
        del names[max(depth - 1, 0):]
        if directory != ROOT:
            names.append(escape_name(index.dir_name[directory]))
        children = index.dir_children[directory]
        files = index.dir_files(directory)
        if len(files) or (not children and directory != ROOT):
            stream = "./" + "/".join(names) if names else "."
            out.append(_stream_line(index, stream, files, strip) if len(files)
                       else f"{stream} {EMPTY_BLOCK} 0:0:\\056\n")
        for name in sorted(children, reverse=True):
            stack.append((children[name], depth + 1))
    return "".join(out)


def _stream_line(index: ManifestIndex, stream: str, files: object, strip: bool) -> str:
    """One normalised stream, as Arvados' ``normalize_stream`` writes it (each block once, in
    first-use order over the sorted files; adjacent pieces of a file merged into one token)."""
    named = sorted((index.file_name(f), f) for f in files)  # type: ignore[attr-defined]
    tokens = [stream]
    offsets: dict[str, int] = {}   # locator text -> where it starts in this stream
    placed: dict[int, int] = {}    # block row -> where it starts in this stream
    visited: dict[int, int] = {}
    sizes, ends = index.blk_size, index.blk_end
    stream_offset = 0
    spans: list[list[tuple[int, int, int, int]]] = []  # per file, kept for the second pass
    for _name, f in named:
        mine = [index.block_span(row) for row in index.file_rows(f)]
        spans.append(mine)
        for first, last, _start, _end in mine:
            x = _find(visited, first)
            while x <= last:
                key = index.locator_text(x, strip=strip)
                at = offsets.get(key)
                if at is None:
                    offsets[key] = at = stream_offset
                    tokens.append(key)
                    stream_offset += sizes[x]
                placed[x] = at
                visited[x] = x + 1
                x = _find(visited, x + 1)
    if len(tokens) == 1:
        tokens.append(EMPTY_BLOCK)
    runs: dict[int, int] = {}
    for (name, _f), mine in zip(named, spans, strict=True):
        escaped = escape_name(name)
        span_start = span_end = -1
        for first, last, start, end in mine:
            if first > last:
                continue
            a = first
            piece = placed[first] + start - (ends[first] - sizes[first])
            while True:
                if a == last:  # the usual case: a segment inside one block
                    b, piece_end = a, piece + end - max(start, ends[a] - sizes[a])
                else:
                    b = _run_end(sizes, placed, runs, a, last)
                    piece_end = placed[b] + (end - (ends[b] - sizes[b]) if b == last else sizes[b])
                if piece == span_end:
                    span_end = piece_end
                else:
                    if span_start >= 0:
                        tokens.append(f"{span_start}:{span_end - span_start}:{escaped}")
                    span_start, span_end = piece, piece_end
                if b == last:
                    break
                a = b + 1
                piece = placed[a]
        tokens.append(f"{span_start}:{span_end - span_start}:{escaped}" if span_start >= 0 else f"0:0:{escaped}")
    return " ".join(tokens) + "\n"


def _run_end(sizes: object, placed: dict[int, int], runs: dict[int, int], x: int, last: int) -> int:
    """The last block of the run from *x* (at most *last*) that lies back to back in the new stream."""
    path = []
    while x < last:
        nxt = runs.get(x)
        if nxt is None:
            if placed[x] + sizes[x] != placed[x + 1]:  # type: ignore[index]
                break
            nxt = runs[x] = x + 1
        path.append(x)
        x = nxt
    for p in path:
        runs[p] = x
    return min(x, last)


def distinct_blocks(index: ManifestIndex) -> list[Locator]:
    """Every distinct block (by md5 and size) the files use, in first-use order."""
    seen: dict[str, Locator] = {}
    visited: dict[int, int] = {}
    for f in range(len(index.file_dir)):
        for row in index.file_rows(f):
            first, last, _start, _end = index.block_span(row)
            x = _find(visited, first)
            while x <= last:
                key = index.locator_text(x, strip=True)
                if key not in seen:
                    seen[key] = index.locator(x)
                visited[x] = x + 1
                x = _find(visited, x + 1)
    return list(seen.values())


def segments_normal_text(files: Mapping[str, Iterable[Any]], directories: Iterable[str]) -> str:
    """The normal form of files given as `Segment` sequences (paths already checked), directly:
    one pass over the segments per directory, as Arvados' ``normalize_stream`` does."""
    by_dir: dict[str, dict[str, Iterable[Any]]] = {}
    for path, segs in files.items():
        head, _, name = path.rpartition("/")
        by_dir.setdefault(head, {})[name] = segs
    tree: dict[str, Any] = {}
    for path in [*by_dir, *directories]:
        node = tree
        for part in path.split("/") if path else ():
            node = node.setdefault(part, {})
    out: list[str] = []
    stack: list[tuple[str, dict[str, Any]]] = [("", tree)]
    while stack:
        path, node = stack.pop()
        stream = f"./{escape_name(path)}" if path else "."
        here = by_dir.get(path)
        if here:
            out.append(" ".join(_segments_stream(stream, here)) + "\n")
        elif not node and path:
            out.append(f"{stream} {EMPTY_BLOCK} 0:0:\\056\n")
        prefix = f"{path}/" if path else ""
        stack.extend((prefix + name, node[name]) for name in sorted(node, reverse=True))
    return "".join(out)


def _segments_stream(stream: str, files: Mapping[str, Iterable[Any]]) -> list[str]:
    tokens = [stream]
    offsets: dict[str, int] = {}
    stream_offset = 0
    names = sorted(files)
    placed = []
    for name in names:
        segs = list(files[name])
        placed.append(segs)
        for seg in segs:
            key = str(seg.locator)
            if key not in offsets:
                tokens.append(key)
                offsets[key] = stream_offset
                stream_offset += seg.locator.size
    if len(tokens) == 1:
        tokens.append(EMPTY_BLOCK)
    for name, segs in zip(names, placed, strict=True):
        escaped = escape_name(name)
        start = end = -1
        for seg in segs:
            at = offsets[str(seg.locator)] + seg.offset
            if at == end:
                end += seg.length
                continue
            if start >= 0:
                tokens.append(f"{start}:{end - start}:{escaped}")
            start, end = at, at + seg.length
        tokens.append(f"{start}:{end - start}:{escaped}" if start >= 0 else f"0:0:{escaped}")
    return tokens
