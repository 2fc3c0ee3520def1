"""Processes sharing one DiskBlockCache directory: consistency, size bound, and one download per block."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from keepstore import Locator
from keepstore.cache import DiskBlockCache

KiB = 1024
MiB = 1024 * KiB
CTX = multiprocessing.get_context("spawn")  # a fresh interpreter, as separate programs would be


def block(n: int, size: int) -> tuple[Locator, bytes]:
    """Block *n*: the same bytes in every process, so processes race on the same entries."""
    seed = hashlib.sha256(n.to_bytes(8, "big")).digest()
    data = (seed * (size // len(seed) + 1))[:size]
    return Locator.for_data(data), data


def fill(path: str, max_bytes: int, seed: int, start, count: int) -> dict:
    """Put, get and get_or_fetch a mix of shared blocks; report anything that came back wrong."""
    start.wait()
    rng = random.Random(seed)
    cache = DiskBlockCache(path, max_bytes)
    wrong = 0
    for _ in range(count):
        n = rng.randrange(40)
        loc, data = block(n, rng.choice([16 * KiB, 200 * KiB, 700 * KiB]) if n % 2 else 300 * KiB)
        action = rng.random()
        if action < 0.4:
            cache.put(loc, data)
        elif action < 0.7:
            got = cache.get(loc)
            wrong += got is not None and got != data
        else:
            wrong += cache.get_or_fetch(loc, lambda data=data: data) != data  # type: ignore[misc]  # bound default
    stats = cache.stats()
    cache.close()
    return {"wrong": wrong, "errors": stats.errors, "corrupt": stats.corrupt}


def slow_get_or_fetch(path: str, log: str, start, delay: float) -> dict:
    """get_or_fetch one shared block with a slow fetch that records each call in *log*."""
    loc, data = block(7, 2 * MiB)
    cache = DiskBlockCache(path, 64 * MiB)

    def fetch() -> bytes:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(delay)  # a slow download (the behaviour under test): the others must wait for it
        return data

    start.wait()
    got = cache.get_or_fetch(loc, fetch)
    return {"ok": got == data, "hits": cache.stats().hits}


def _call(queue, func, *args) -> None:
    queue.put(func(*args))


def run_processes(*calls) -> list[dict]:
    queue = CTX.Queue()
    procs = [CTX.Process(target=_call, args=(queue, *call)) for call in calls]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    return results


def test_two_processes_filling_one_directory_leave_it_consistent_and_bounded(tmp_path):
    path, max_bytes = str(tmp_path / "c"), 4 * MiB
    start = CTX.Barrier(2)
    results = run_processes((fill, path, max_bytes, 1, start, 400), (fill, path, max_bytes, 2, start, 400))
    assert results == [{"wrong": 0, "errors": 0, "corrupt": 0}] * 2

    cache = DiskBlockCache(path, max_bytes)
    entries = list(cache.locators())
    assert entries, "the cache ended up empty"
    for loc in entries:
        data = cache.get(loc)
        assert data is not None and Locator.for_data(data) == loc
    assert cache.stats().corrupt == 0
    # Every block file belongs to an entry (no orphans from racing writes or evictions) ...
    files = list(Path(path).rglob("*.val"))
    assert len(files) == sum(loc.size >= 64 * KiB for loc in entries)
    # ... and the directory respects its bound, give or take one block and SQLite's log.
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    assert total <= max_bytes + 700 * KiB + MiB, total
    assert cache.stats().current_bytes <= max_bytes


def test_two_processes_wanting_one_block_download_it_once(tmp_path):
    path, log = str(tmp_path / "c"), str(tmp_path / "fetches")
    start = CTX.Barrier(2)
    results = run_processes((slow_get_or_fetch, path, log, start, 1.5), (slow_get_or_fetch, path, log, start, 1.5))
    assert all(r["ok"] for r in results)
    assert len(Path(log).read_text().split()) == 1
    assert sorted(r["hits"] for r in results) == [0, 1]  # the second read the first's result


def hold_lock_and_die(path: str, log: str, started) -> None:
    """Start a fetch that never finishes; the test kills this process while it holds the lock."""
    loc, _ = block(7, 2 * MiB)
    cache = DiskBlockCache(path, 64 * MiB)

    def fetch() -> bytes:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        started.set()
        time.sleep(600)  # a download that never ends: the test kills this process
        raise AssertionError("unreachable")

    cache.get_or_fetch(loc, fetch)


@pytest.mark.wall_clock  # a dead holder's lock released in time
def test_a_killed_fetcher_does_not_block_other_processes(tmp_path):
    path, log = str(tmp_path / "c"), str(tmp_path / "fetches")
    started = CTX.Event()
    holder = CTX.Process(target=hold_lock_and_die, args=(path, log, started))
    holder.start()
    try:
        assert started.wait(30)
        loc, data = block(7, 2 * MiB)
        cache = DiskBlockCache(path, 64 * MiB, lock_timeout=60)
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        began = time.monotonic()
        assert cache.get_or_fetch(loc, lambda: data) == data
        assert time.monotonic() - began < 5  # the kernel released the dead holder's flock
    finally:
        holder.kill()
        holder.join(10)
    assert len(Path(log).read_text().split()) == 1
    assert cache.get(loc) == data

