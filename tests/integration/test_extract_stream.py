"""`keep get` / extract stream each block into its files: one GET per block, nothing unverified
renamed into place, no temp file left after a failure, memory bounded by the stages in flight."""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from keepstore.client import KeepClient
from keepstore.datasets import DatasetReader, DatasetWriter
from keepstore.errors import ReadError
from keepstore.testing import DEFAULT_SYSTEM_TOKEN

KiB, MiB = 1 << 10, 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def client(server, **options) -> KeepClient:
    # No backoff waits between retry rounds: the tests count requests, not time.
    return KeepClient(services=[server.url], token=DEFAULT_SYSTEM_TOKEN, sleep=lambda seconds: None, **options)


def store_files(server, files: dict[str, bytes], block_size: int = 8 * MiB) -> tuple[str, list[str]]:
    """*files* stored on *server* in blocks of *block_size*: the dataset locator and the data blocks' md5s."""
    with client(server) as kc, DatasetWriter(kc, copies=1, block_size=block_size) as w:
        for path, data in files.items():
            w.add_bytes(path, data)
        receipt = w.finish()
    server.requests.clear()
    return receipt.locator, [b.locator.split("+")[0] for b in receipt.blocks]


def mixed_files(seed: int) -> dict[str, bytes]:
    """In 8 MiB blocks: a file filling block 0 (written with O_DIRECT), then small files sharing
    block 1 with the start of a file that ends in block 2, and an empty file."""
    rng = random.Random(seed)
    files = {"big/aligned.bin": rng.randbytes(8 * MiB)}
    files.update({f"d{i % 5}/f{i:04}.dat": rng.randbytes(rng.randrange(1, 6 * KiB)) for i in range(300)})
    files["big/spans.bin"] = rng.randbytes(9 * MiB + 123)  # crosses a block boundary, odd length
    files["empty"] = b""
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def gets(server) -> collections.Counter[str]:
    return collections.Counter(r.path.strip("/").split("+")[0] for r in server.requests if r.method == "GET")


def keep_env(server, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), KEEP_SERVICES=server.url, KEEP_TOKEN=DEFAULT_SYSTEM_TOKEN,
               PYTHONPATH=str(ROOT))
    return env


def test_keep_get_of_multi_file_blocks_gets_each_block_exactly_once(keep_server, tmp_path):
    files = mixed_files(1)
    locator, blocks = store_files(keep_server, files)
    assert len(blocks) == 3
    done = subprocess.run([sys.executable, "-m", "keepstore", "get", "--no-progress", locator, str(tmp_path / "got")],
                          env=keep_env(keep_server, tmp_path), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert tree(tmp_path / "got") == files
    counts = gets(keep_server)
    assert {md5: counts[md5] for md5 in blocks} == dict.fromkeys(blocks, 1)
    assert sum(counts.values()) == len(blocks) + 1  # and the manifest block, once


def test_a_replica_corrupted_mid_stream_is_fetched_again_and_the_files_are_right(keep_server, tmp_path):
    files = mixed_files(2)
    locator, blocks = store_files(keep_server, files)
    keep_server.faults.corrupt(times=1, block=blocks[1])  # one byte flipped in the middle of its first GET
    keep_server.faults.truncate(times=1, block=blocks[2])  # half of its first GET, then the connection closes
    with client(keep_server) as kc, DatasetReader(kc, locator) as reader:
        assert reader.extract(tmp_path / "out") == sum(map(len, files.values()))
    assert tree(tmp_path / "out") == files  # the second GET wrote the same places again, from offset 0
    counts = gets(keep_server)
    assert [counts[md5] for md5 in blocks] == [1, 2, 2]


def test_a_block_corrupted_on_every_get_leaves_no_file_of_it_and_no_temp_file(keep_server, tmp_path):
    files = mixed_files(3)
    locator, blocks = store_files(keep_server, files)
    keep_server.faults.corrupt(times=None, block=blocks[1])  # the small files and the start of spans.bin
    with (client(keep_server, retries=2) as kc, DatasetReader(kc, locator, threads=1) as reader,
          pytest.raises(ReadError, match="checksum mismatch")):
        reader.extract(tmp_path / "out")
    assert gets(keep_server)[blocks[1]] == 3  # every round streamed the whole (corrupted) body
    left = tree(tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".keep-")]
    # What is there is whole and right; nothing that block holds a byte of is there.
    assert all(files[path] == data for path, data in left.items())
    assert not [p for p in left if p.startswith("d") or p == "big/spans.bin"]
    assert "big/aligned.bin" in left  # block 0 arrived whole before: its file is committed


def test_a_large_block_streamed_with_a_wrong_md5_fails_cleanly(keep_server, tmp_path):
    rng = random.Random(4)
    files = {"large.bin": rng.randbytes(24 * MiB), "other/small.txt": b"small\n"}
    locator, blocks = store_files(keep_server, files, block_size=64 * MiB)
    assert len(blocks) == 1
    keep_server.faults.corrupt(times=None, block=blocks[0])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "large.bin").write_bytes(b"what was here before")
    with (client(keep_server, retries=1) as kc, DatasetReader(kc, locator) as reader,
          pytest.raises(ReadError, match="checksum mismatch") as failure):
        reader.extract(tmp_path / "out")
    assert DEFAULT_SYSTEM_TOKEN not in str(failure.value)
    # The 24 MiB went to a temp file (straight to disk, in 4 MiB stages) and was never renamed
    # over the existing file; the temp file is gone.
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == [
        "large.bin", "other"]
    assert (tmp_path / "out" / "large.bin").read_bytes() == b"what was here before"
    assert gets(keep_server)[blocks[0]] == 2


def test_extract_makes_the_renames_durable_before_it_returns(keep_server, tmp_path, monkeypatch):
    from keepstore.datasets import durable

    files = mixed_files(5)
    locator, _blocks = store_files(keep_server, files)
    events: list[tuple[str, str]] = []
    real_sync_directories, real_replace = durable.Durability.sync_directories, os.replace

    def sync_directories(self, directories):
        events.extend(("sync", d) for d in directories)
        real_sync_directories(self, directories)

    def replace(src, dst):
        events.append(("rename", os.path.dirname(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(durable.Durability, "sync_directories", sync_directories)
    monkeypatch.setattr(os, "replace", replace)
    with client(keep_server) as kc, DatasetReader(kc, locator) as reader:
        reader.extract(tmp_path / "out")
    monkeypatch.undo()
    renamed_into = {d for kind, d in events if kind == "rename"}
    last_rename = max(i for i, (kind, _d) in enumerate(events) if kind == "rename")
    synced_after = {d for kind, d in events[last_rename:] if kind == "sync"}
    assert len(renamed_into) == 7 and synced_after == renamed_into  # 5 + big/ + the root


MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True)
print(json.dumps({"rc": done.returncode, "err": done.stderr.decode()[-2000:],
                  "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def peak_rss(args: list[str], env: dict[str, str]) -> int:
    """The peak RSS of ``keep ARGS`` in a process of its own (its parent's getrusage of children)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "keepstore", *args], env=env,
                         capture_output=True, timeout=300)
    result = json.loads(out.stdout.decode().splitlines()[-1])
    assert result["rc"] == 0, result["err"]
    return result["rss"]


def test_keep_get_of_large_blocks_holds_no_block_in_memory(keep_server, tmp_path):
    rng = random.Random(6)
    files = {f"part{i}.bin": rng.randbytes(24 * MiB) for i in range(4)}  # 96 MiB: a 64 MiB block and a 32 MiB one
    locator, blocks = store_files(keep_server, files, block_size=64 * MiB)
    assert len(blocks) == 2
    env = keep_env(keep_server, tmp_path)
    listing = peak_rss(["ls", locator], env)  # the same start-up, manifest and client, no block
    getting = peak_rss(["get", "--no-progress", locator, str(tmp_path / "got")], env)
    assert tree(tmp_path / "got") == files
    # Both blocks stream at once through a 4 MiB stage each; holding either block would add 32-64 MiB.
    assert getting - listing < 24 * MiB, (getting, listing)


def test_get_into_raises_the_writers_own_error_at_once_without_trying_again(keep_server):
    import errno

    with client(keep_server) as kc:
        loc = kc.put(random.Random(7).randbytes(3 * MiB), copies=1)
        keep_server.requests.clear()
        calls = []

        def write(offset: int, piece: bytes) -> None:
            calls.append(offset)
            raise OSError(errno.ENOSPC, "No space left on device (test)")

        with pytest.raises(OSError, match="No space left") as failure:
            kc.get_into(loc, write)
    assert failure.value.errno == errno.ENOSPC
    assert calls == [0]  # the transfer stopped at the first piece
    assert gets(keep_server)[loc.md5] == 1  # a disk error is not the replica's fault: no second GET
