"""Manifests at scale: memory bounded by the text, no recursion limit, linear normalisation."""

from __future__ import annotations

import gc
import hashlib
import sys
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_manifest import assert_normal_form_matches_arvados

from keepstore.datasets.manifest import FileSegments, Manifest, ManifestError, ManifestFile, Segment
from keepstore.datasets.manifest_index import ManifestIndex
from keepstore.locator import EMPTY_BLOCK, Locator

T = TypeVar("T")
FOO = "acbd18db4cc2f85cedef654fccc4a4d8+3"
BAR = "37b51d194a7513e45b56f6524f2d51f2+3"


def peak_bytes(func: Callable[[], T]) -> tuple[T, int]:
    """What *func* returns, and the most memory it had allocated at once (its input not counted)."""
    tracemalloc.start()
    try:
        result = func()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_rss_growth(func: Callable[[], T]) -> tuple[T, int]:
    """What *func* returns, and how far the process's resident memory rose above where it was
    (the kernel's high-water mark, reset first through /proc/self/clear_refs). Unlike
    tracemalloc it costs nothing per allocation, so a 64 MiB parse is measured at full speed,
    and it sees every byte the parse makes resident, allocator overhead included."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux 4.0+)
    except OSError as exc:
        pytest.skip(f"cannot reset the RSS high-water mark here: {exc}")
    base = _status_bytes("VmRSS:")
    result = func()
    return result, _status_bytes("VmHWM:") - base


def signed(i: int) -> str:
    md5 = hashlib.md5(str(i).encode()).hexdigest()
    return f"{md5}+67108864+A{md5}{md5[:8]}@7fffffff"


@pytest.mark.slow
def test_a_64_mib_manifest_parses_in_at_most_three_times_its_text_in_memory():
    """A 64 MiB manifest (the largest one block holds): 2,540 streams of 200 signed 64 MiB blocks
    and 200 files each, which is 508,000 blocks and as many files."""
    lines = []
    for s in range(2540):
        blocks = " ".join(signed(s * 200 + b) for b in range(200))
        files = " ".join(f"{b * 67108864}:67108864:part-{b:05d}.parquet" for b in range(200))
        lines.append(f"./run{s:04d} {blocks} {files}\n")
    text = "".join(lines)
    del lines
    assert len(text) >= 64 * 1024 * 1024
    manifest, peak = peak_rss_growth(lambda: Manifest.parse(text))
    assert peak <= 3 * len(text)
    assert len(manifest.files) == 508_000 and manifest.file("run2539/part-00199.parquet").size == 67108864


def test_a_100k_file_manifest_round_trips_within_three_times_its_text():
    blocks = [str(Locator.for_data(bytes([i]) * 1000)) for i in range(100)]
    text = ". " + " ".join(blocks) + " " + " ".join(f"{i % 99000}:{i % 7}:f{i:06d}.csv" for i in range(100_000)) + "\n"
    manifest, peak = peak_bytes(lambda: Manifest.parse(text))
    assert peak <= 3 * len(text)
    assert len(manifest.files) == 100_000 and manifest.total_size == sum(i % 7 for i in range(100_000))
    again = Manifest.parse(manifest.normalized_text())
    assert {p: f.size for p, f in again.files.items()} == {p: f.size for p, f in manifest.files.items()}
    assert again.portable_data_hash() == manifest.portable_data_hash()
    rebuilt = Manifest.from_files({p: list(f.segments) for p, f in manifest.files.items()})
    assert rebuilt.text == manifest.normalized_text()


def test_a_segment_spanning_every_block_is_one_range_not_one_entry_per_block():
    """The issue's 95 KB manifest that took 510 MiB: 2,000 blocks, 2,000 files spanning them all."""
    blocks = [str(Locator.for_data(str(i))) for i in range(2000)]
    total = sum(Locator.parse(b).size for b in blocks)
    text = ". " + " ".join(blocks) + " " + " ".join(f"0:{total}:f{i}" for i in range(2000)) + "\n"
    manifest, peak = peak_bytes(lambda: Manifest.parse(text))
    assert peak <= 3 * len(text)
    segments = manifest.file("f7").segments
    assert isinstance(segments, FileSegments) and len(segments) == 2000
    assert segments[-1] == Segment(Locator.parse(blocks[-1]), 0, Locator.parse(blocks[-1]).size)
    tokens = manifest.normalized_text().rstrip("\n").split(" ")
    assert tokens[1:2001] == blocks
    assert tokens[2001:] == [f"0:{total}:f{i}" for i in sorted(range(2000), key=str)]


def test_normalising_touches_each_block_once_per_stream_however_many_files_span_it(monkeypatch):
    """Counted, not timed: the locator of each spanned block is read once, not once per file."""
    blocks = [str(Locator.for_data(str(i))) for i in range(500)]
    total = sum(Locator.parse(b).size for b in blocks)
    text = ". " + " ".join(blocks) + " " + " ".join(f"1:{total - 2}:f{i}" for i in range(500)) + "\n"
    manifest = Manifest.parse(text)
    calls = []
    real = ManifestIndex.locator_text
    monkeypatch.setattr(ManifestIndex, "locator_text", lambda self, b, **kw: calls.append(b) or real(self, b, **kw))  # type: ignore[func-returns-value]
    normal = manifest.normalized_text()
    # The first (one-byte) block holds nothing the files use, so the normal form drops it.
    assert normal.endswith(f" 0:{total - 2}:f99\n") and normal.count("+") == 499
    assert len(calls) == 499


def test_empty_blocks_take_no_room_and_no_time():
    """The issue's O(segments x empty blocks) manifest: 20,000 empty blocks between two real ones."""
    text = (". " + " ".join([FOO, *[EMPTY_BLOCK] * 20000, BAR]) + " "
            + " ".join(f"0:6:f{i}" for i in range(20000)) + "\n")
    manifest, peak = peak_bytes(lambda: Manifest.parse(text))
    assert peak <= 3 * len(text)
    assert list(manifest.file("f3").segments) == [Segment(Locator.parse(FOO), 0, 3), Segment(Locator.parse(BAR), 0, 3)]
    assert manifest.normalized_text().startswith(f". {FOO} {BAR} 0:6:f0 0:6:f1 ")


@pytest.mark.parametrize("depth", [2000])
def test_two_thousand_nested_directories_work_everywhere(depth):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # no operation may recurse per directory level
    try:
        path = "/".join(f"d{i}" for i in range(depth))
        text = f"./{path} {FOO} 0:3:leaf\n"
        manifest = Manifest.parse(text)
        assert manifest.normalized_text() == text
        assert manifest.portable_data_hash() == f"{hashlib.md5(text.encode()).hexdigest()}+{len(text)}"
        assert manifest.listdir(path) == ["leaf"] and manifest.listdir("") == ["d0"]
        assert [f.path for f in manifest.walk_files()] == [f"{path}/leaf"]
        walked = list(manifest.walk())
        assert len(walked) == depth + 1 and walked[-1] == (path, [], ["leaf"])
        assert len(manifest.directories) == depth
        assert Manifest.from_files({f"{path}/leaf": [Segment(Locator.parse(FOO), 0, 3)]}).text == text
        empty = Manifest.parse(f"./{path} {EMPTY_BLOCK} 0:0:\\056\n")
        assert empty.normalized_text() == f"./{path} {EMPTY_BLOCK} 0:0:\\056\n"
    finally:
        sys.setrecursionlimit(limit)


def _work_for(dirs: int, monkeypatch) -> int:
    """How many index look-ups normalising *dirs* one-file directories makes."""
    text = "".join(f"./d{i:05d} {FOO} 0:3:f\n" for i in range(dirs))
    manifest = Manifest.parse(text)
    count = [0]
    for name in ("dir_files", "file_name", "block_span", "locator_text", "file_rows"):
        real = getattr(ManifestIndex, name)
        monkeypatch.setattr(ManifestIndex, name,
                            lambda self, *a, _real=real, **k: count.__setitem__(0, count[0] + 1) or _real(self, *a, **k))
    normal = manifest.normalized_text()
    monkeypatch.undo()
    assert normal == text  # already normal: one line per directory, in name order
    return count[0]


def test_normalising_10k_and_20k_directories_is_linear(monkeypatch):
    """10k directories took 12 s and 20k 53 s: doubling the directories must double the work."""
    small, large = _work_for(10_000, monkeypatch), _work_for(20_000, monkeypatch)
    assert large <= 2.1 * small


def test_file_segments_behave_like_a_tuple_of_segments():
    a, b = Locator.parse(FOO), Locator.for_data(b"bar")
    manifest = Manifest.parse(f". {FOO} {b} 1:4:x\n")
    segs = manifest.file("x").segments
    assert segs == (Segment(a, 1, 2), Segment(b, 0, 2)) and len(segs) == 2
    assert segs[-1] == Segment(b, 0, 2) and segs[0:1] == (Segment(a, 1, 2),)
    assert hash(manifest.file("x")) == hash(manifest.file("x"))
    with pytest.raises(IndexError):
        segs[2]  # type: ignore[misc]  # out of range on purpose


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.data())
def test_segments_in_gives_the_pieces_of_a_byte_range(sizes, data):
    locs = [Locator.for_data(bytes([i]) * n) for i, n in enumerate(sizes)]
    total = sum(sizes)
    pos = data.draw(st.integers(0, total - 1))
    length = data.draw(st.integers(1, total - pos))
    manifest = Manifest.parse(f". {' '.join(map(str, locs))} {pos}:{length}:f 0:{total}:f\n")
    file = manifest.file("f")
    offset = data.draw(st.integers(0, file.size))
    want = data.draw(st.integers(0, file.size))
    # reference: every byte of the file, as (block, offset in block)
    bytes_of = [(s.locator, s.offset + k) for s in file.segments for k in range(s.length)]
    pieces = file.segments_in(offset, want)
    got = [(seg.locator, seg.offset + k) for _i, _at, seg in pieces for k in range(seg.length)]
    assert got == bytes_of[offset:offset + want]
    assert all(file.segments[i].locator == seg.locator for i, _at, seg in pieces)
    assert file.segments_in(offset, want) == as_tuple_file(file).segments_in(offset, want)


def as_tuple_file(file: ManifestFile) -> ManifestFile:
    """The same file with a plain tuple of segments (the other branch of segments_in)."""
    return ManifestFile(file.path, tuple(file.segments))


# Few distinct blocks, so streams repeat them and files share and revisit them: the cases the
# normaliser's skip-ahead links must get right. Compared with the Arvados SDK itself.
_pool = [Locator.for_data(bytes([i]) * n) for i, n in enumerate([1, 2, 3, 5, 8])]


@st.composite
def reused_block_manifests(draw):
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        stream = draw(st.sampled_from([".", "./d", "./d/e"]))
        blocks = draw(st.lists(st.sampled_from(_pool), min_size=1, max_size=8))
        total = sum(b.size for b in blocks)
        segs = []
        for _ in range(draw(st.integers(1, 5))):
            pos = draw(st.integers(0, total))
            length = draw(st.integers(0, total - pos))
            segs.append(f"{pos}:{length}:{draw(st.sampled_from(['a', 'b', 'c', 'x/y']))}")
        lines.append(" ".join([stream, *map(str, blocks), *segs]) + "\n")
    return "".join(lines)


@pytest.mark.compat
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reused_block_manifests())
def test_normal_form_with_reused_blocks_equals_the_arvados_sdk(text):
    assert_normal_form_matches_arvados(text)


@pytest.mark.parametrize("text", [
    ". " + " ".join([FOO] * 3) + " 0:" + "9" * 30 + ":f\n",
    "./" + "/".join(["a"] * 3000) + "/.. " + FOO + " 0:3:f\n",
    ". " + FOO + " " + " ".join(["0:3:a/b"] * 100) + " 0:3:a\n",
    ". " + FOO + " 0:3:" + "x/" * 5000 + "\n",
    ". " + FOO + "+" + "9" * 5000 + " 0:3:f\n",
    ". " + FOO + " 0:3:\\000\n",
])
def test_adversarial_manifests_raise_manifest_error_within_bounded_memory(text):
    def parse():
        with pytest.raises(ManifestError):
            Manifest.parse(text)
    _none, peak = peak_bytes(parse)
    assert peak <= 3 * len(text) + 256 * 1024


def test_deep_directories_cost_a_bounded_amount_each():
    """A directory is a tree node (not a full path string), so 20,000 levels of "a/" cost a bounded
    amount per level rather than their path length each (which would be 400 MB of names)."""
    text = "./" + "/".join(["a"] * 20_000) + f" {FOO} 0:3:f\n"
    manifest, peak = peak_bytes(lambda: Manifest.parse(text))
    assert peak <= 400 * 20_000  # bytes per level: a dict of children, an id and a name each
    assert manifest.file("a/" * 20_000 + "f").size == 3


def test_walk_lists_every_directory_top_down_like_os_walk():
    manifest = Manifest.parse(f". {FOO} 0:3:z 0:3:b/y 0:3:a/x\n./a/c {EMPTY_BLOCK} 0:0:\\056\n")
    assert list(manifest.walk()) == [("", ["a", "b"], ["z"]), ("a", ["c"], ["x"]), ("a/c", [], []), ("b", [], ["y"])]
    assert list(manifest.walk("a/c")) == [("a/c", [], [])]
    with pytest.raises(NotADirectoryError):
        list(manifest.walk("z"))
    with pytest.raises(FileNotFoundError):
        list(manifest.walk("nope"))


def test_the_manifests_at_scale_example_in_docs_datasets_md_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    section = text[text.index("## Manifests at scale"):]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/datasets.md", "exec"), {})


@st.composite
def segment_files(draw):
    files = {}
    for _ in range(draw(st.integers(0, 6))):
        path = draw(st.sampled_from(["a", "b", "d/a", "d/e/f", "x y/z", "d/e/g", "d/e", "q"]))
        segs = []
        for _ in range(draw(st.integers(0, 4))):
            loc = draw(st.sampled_from(_pool))
            offset = draw(st.integers(0, loc.size - 1))
            segs.append(Segment(loc, offset, draw(st.integers(1, loc.size - offset))))
        files[path] = segs
    dirs = draw(st.lists(st.sampled_from(["d", "q", "q/r", "d/e/h"]), max_size=3))
    return files, dirs


@settings(max_examples=300, deadline=None)
@given(segment_files())
def test_from_files_writes_the_same_normal_form_as_normalising_the_parsed_index(given_files):
    """Two normalisers (straight from Segment lists, and over the parsed index) must agree."""
    files, dirs = given_files
    try:
        built = Manifest.from_files(files, dirs)
    except ManifestError:
        with pytest.raises(ManifestError):
            Manifest({p: ManifestFile(p, tuple(s)) for p, s in files.items()}, dirs)
        return
    other = Manifest({p: ManifestFile(p, tuple(s)) for p, s in files.items()}, dirs)
    assert built.text == other.normalized_text() == Manifest.parse(built.text).normalized_text()
    assert built.portable_data_hash() == other.portable_data_hash()
    assert {p: f.size for p, f in built.files.items()} == {p: sum(s.length for s in segs) for p, segs in files.items()}


@st.composite
def mutated_manifests(draw):
    """Valid manifests with nested paths, empty and repeated blocks and placeholders, then (mostly)
    damaged by a few random edits."""
    pool = [*_pool, Locator.parse(EMPTY_BLOCK)]
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        stream = draw(st.sampled_from([".", "./d", "./d/e", "./a\\040b"]))
        blocks = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6))
        total = sum(b.size for b in blocks)
        segs = []
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, total))
            name = draw(st.sampled_from(["f", "g", "s/f", "s/t/u", ".", "s/.", "\\056", "h\\072i"]))
            segs.append(f"{pos}:{draw(st.integers(0, total - pos))}:{name}")
        lines.append(" ".join([stream, *map(str, blocks), *segs]) + "\n")
    text = "".join(lines)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", " ", "\n", "/", ".", "0", "9", ":", "+", "\\", "x"])) \
            + text[at + draw(st.integers(0, 2)):]
    return text


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_damaged_manifests_raise_manifest_error_or_answer_consistently(text):
    try:
        m = Manifest.parse(text)
    except ManifestError:
        return
    walked = {f"{d}/{n}" if d else n for d, _dirs, names in m.walk() for n in names}
    assert walked == set(m.files) == {f.path for f in m.walk_files()}
    for path, f in m.files.items():
        assert m.file(path) == f and f.size == sum(s.length for s in f.segments)
        assert [s for _i, _at, s in f.segments_in(0, f.size)] == [s for s in f.segments]
    assert m.total_size == sum(f.size for f in m.files.values())
    again = Manifest.parse(m.normalized_text())
    assert {p: f.size for p, f in again.files.items()} == {p: f.size for p, f in m.files.items()}
    assert again.portable_data_hash() == m.portable_data_hash() and again.directories == m.directories
    assert again.normalized_text() == m.normalized_text()
    assert {b.bare() for b in m.blocks()} >= {s.locator.bare() for f in m.files.values() for s in f.segments}


def test_segments_in_works_on_a_freshly_parsed_file_before_anything_else_is_asked() -> None:
    from keepstore.datasets.manifest import Manifest

    text = ". acbd18db4cc2f85cedef654fccc4a4d8+3 37b51d194a7513e45b56f6524f2d51f2+3 0:6:foobar.txt\n"
    pieces = Manifest.parse(text).file("foobar.txt").segments_in(2, 3)
    assert [(offset, seg.offset, seg.length) for _, offset, seg in pieces] == [(2, 2, 1), (3, 0, 2)]
