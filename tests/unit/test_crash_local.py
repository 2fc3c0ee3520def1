"""LocalStore under SIGKILL: killed writers never leave a readable partial block or a trap for `put`."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from keepstore.errors import BlockNotFound
from keepstore.local import TEMP_PREFIX, LocalStore
from keepstore.locator import Locator
from keepstore.locator import md5 as fips_md5

pytestmark = pytest.mark.slow

MiB = 1 << 20
BLOCK_COUNT = 12
ITERATIONS = 20
MIN_KILLS = 5  # the kill loop always runs this many; beyond them it stops at TIME_LIMIT
TIME_LIMIT = 20.0  # seconds for the kill loop, whatever the machine's speed
HANG_GUARD = 300.0  # seconds: a loop still short of MIN_KILLS by then is stuck, not slow

# The child derives the same blocks as the parent: block n is a seeded pattern of 4-8 MiB.
BLOCKS_CODE = textwrap.dedent("""
    import hashlib

    def block(n: int) -> bytes:
        size = (4 << 20) + (n * 349_525) % (4 << 20)
        seed = hashlib.sha256(b"crash-block-%d" % n).digest()
        return (seed * (size // len(seed) + 1))[:size]
""")

WRITER_CODE = BLOCKS_CODE + textwrap.dedent("""
    import random, sys
    from keepstore.local import LocalStore

    store = LocalStore(sys.argv[1])
    order = list(range(int(sys.argv[2])))
    random.Random(int(sys.argv[3])).shuffle(order)
    print("ready", flush=True)
    while True:
        for n in order:
            store.put(block(n))
""")

SAME_BLOCK_CODE = BLOCKS_CODE + textwrap.dedent("""
    import sys
    from keepstore.local import LocalStore

    store = LocalStore(sys.argv[1])
    data = block(0)
    for _ in range(3):
        loc = store.put(data)
        assert store.get(loc) == data
    print(loc)
""")

namespace: dict = {}
exec(BLOCKS_CODE, namespace)  # the parent's copy of block(), identical to the child's
block = namespace["block"]


def _block_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and re.fullmatch(r"[0-9a-f]{32}", p.name)]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


def test_sigkilled_writers_leave_no_readable_partial_block_and_no_trap_for_put(tmp_path: Path) -> None:
    root = tmp_path / "store"
    rng = random.Random(20240607)
    started = time.monotonic()
    kills = 0
    for iteration in range(ITERATIONS):
        elapsed = time.monotonic() - started
        if kills >= MIN_KILLS and elapsed > TIME_LIMIT:
            break  # a slow machine runs longer rather than fail: the time limit only trims extras
        assert elapsed < HANG_GUARD, f"only {kills} kills in {elapsed:.0f} s"
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER_CODE, str(root), str(BLOCK_COUNT), str(iteration)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n", child.stderr.read() if child.stderr else b""
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment to kill at (the crash under test)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        assert child.returncode == -signal.SIGKILL
        kills += 1

        # After every kill: whatever sits under a block name is that block, byte for byte.
        for path in _block_files(root):
            assert fips_md5(path.read_bytes()).hexdigest() == path.name, f"partial block {path} is visible"
        # Mostly start afresh, so the next writer is killed while writing rather than while
        # re-verifying blocks it finds complete; sometimes keep them, so both paths are crossed.
        if iteration < ITERATIONS - 1 and rng.random() < 0.75:
            for path in _block_files(root):
                path.unlink()
    assert kills >= MIN_KILLS

    store = LocalStore(root)
    for n in range(BLOCK_COUNT):
        data = block(n)
        loc = Locator.for_data(data)
        try:
            assert store.get(loc) == data
        except BlockNotFound:
            pass  # never written completely: absent is fine, wrong bytes are not

    # Leftover temp files must not make a later put of the same blocks fail.
    leftovers = _temp_files(root)
    assert leftovers, "no kill landed during a write, so nothing above was tested"
    for n in range(BLOCK_COUNT):
        data = block(n)
        loc = store.put(data)
        assert store.get(loc) == data
    assert {p for p in _temp_files(root)} == set(leftovers)  # put cleans up after itself

    assert store.remove_stale_temp_files(older_than=0) == len(leftovers)
    assert _temp_files(root) == []
    assert sorted(md5 for md5, _, _ in store.index()) == sorted(Locator.for_data(block(n)).md5
                                                                 for n in range(BLOCK_COUNT))
    for n in range(BLOCK_COUNT):
        assert store.get(Locator.for_data(block(n))) == block(n)


def test_processes_writing_the_same_block_at_once_all_succeed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    children = [
        subprocess.Popen([sys.executable, "-c", SAME_BLOCK_CODE, str(root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    expected = Locator.for_data(block(0))
    assert {out.strip() for out, _ in outputs} == {str(expected)}
    [path] = _block_files(root)
    assert path == root / expected.md5[:3] / expected.md5
    assert fips_md5(path.read_bytes()).hexdigest() == expected.md5
    assert _temp_files(root) == []
    assert LocalStore(root).get(expected) == block(0)


HOLDING_WRITER_CODE = textwrap.dedent("""
    import sys
    from keepstore.local import LocalStore
    from keepstore.locator import md5

    data = b"half-written block " * 1000
    writer = LocalStore(sys.argv[1]).writer(md5(data).hexdigest())
    writer.write(data[:5000])
    print(writer.temp, flush=True)
    sys.stdin.read()  # hold the temp file (and its lock) until killed
""")


def test_reclaim_never_takes_a_live_writers_temp_and_takes_it_once_the_writer_is_killed(tmp_path: Path) -> None:
    """Issue 15 item 7: temp files of SIGKILLed writers are reclaimed; a live writer's never are."""
    child = subprocess.Popen([sys.executable, "-c", HOLDING_WRITER_CODE, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        temp = Path(child.stdout.readline().strip())
        assert temp.name.startswith(TEMP_PREFIX) and temp.exists()
        store = LocalStore(tmp_path)
        far_future = time.time() + 86400  # an injected clock: every temp counts as old
        assert store.reclaim(older_than=60, now=far_future) == 0  # locked by the live writer
        assert temp.exists()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        assert temp.exists()  # kill -9 left it behind
        assert store.reclaim(older_than=60, now=time.time() - 3600) == 0  # too young for this clock
        assert temp.exists()
        assert store.reclaim(older_than=60, now=far_future) == 1
        assert not temp.exists()
    finally:
        child.kill()
        child.wait(timeout=60)
