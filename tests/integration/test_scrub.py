"""keep serve scrub: a flipped byte is found, quarantined, read around by clients, and repaired."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from keepstore import KeepClient
from keepstore.lifecycle import check_blocks, repair_blocks
from keepstore.locator import Locator
from keepstore.server import KeepServer
from keepstore.server.blocks import Found
from keepstore.server.scrub import Scrubber
from keepstore.testing import KeepCluster

SYSTEM = "system-token-for-scrub-tests"


def flip_a_byte(server: KeepServer, loc: Locator, offset: int = 7) -> Path:
    path = server.volumes[0].store.find(loc.md5)
    assert path is not None
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def quarantined(server: KeepServer) -> list[str]:
    root = server.volumes[0].path
    return sorted(p.name.split(".")[0] for p in root.glob("*/*.quarantine.*"))


def test_scrub_quarantines_a_flipped_byte_clients_read_around_it_and_repair_restores_it(tmp_path):
    with KeepCluster(2, tmp_path) as cluster, cluster.client(copies=2) as kc:
        data = b"scrub me " * 1000
        loc = kc.put(data, copies=2)
        good = kc.put(b"an intact neighbour", copies=2)
        assert cluster.holders(loc) == [0, 1]
        bad = cluster.servers[0]
        flip_a_byte(bad, loc)

        report = bad.scrub_once()

        assert report.quarantined == ((str(bad.volumes[0].path), loc.md5),)
        assert report.blocks == 2 and report.bytes == loc.size + good.size
        assert quarantined(bad) == [loc.md5]
        assert cluster.holders(loc) == [1]  # not served, not found under its name
        assert loc.md5 not in cluster.servers[0].blocks.index("").decode()
        assert kc.get(loc) == data  # the other replica
        check = check_blocks(kc, [loc, good], copies=2, read_fraction=1.0)
        assert [b.state for b in check.blocks] == ["under-replicated", "healthy"]
        receipt = repair_blocks(kc, check)
        assert receipt.blocks[0].written_to == (bad.url,)
        assert check_blocks(kc, [loc, good], copies=2, read_fraction=1.0).exit_code == 0
        assert bad.scrub_once().quarantined == ()  # the repaired copy is sound


def test_scrub_leaves_sound_blocks_and_the_trash_alone(tmp_path):
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False, trash_min_age=0) as s, \
            KeepClient([s.url], copies=1) as kc:
        locs = [kc.put(f"sound block {i}".encode()) for i in range(5)]
        assert s.blocks.trash(locs[0].md5, locs[0].size)[0].removed
        report = s.scrub_once()
        assert (report.blocks, report.quarantined) == (4, ())
        assert [kc.get(loc) for loc in locs[1:]] == [f"sound block {i}".encode() for i in range(1, 5)]


def test_the_background_scrub_quarantines_without_being_asked(tmp_path):
    with KeepServer([tmp_path / "v"], fsync=False, scrub_interval=0.05, scrub_rate=None) as s, \
            KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"found by the background pass")
        flip_a_byte(s, loc)
        assert s.scrub_job is not None
        passes = s.scrub_passes
        assert s.scrub_job.wait_for_passes(passes + 2, timeout=30)  # a whole pass after the flip
        assert quarantined(s) == [loc.md5]


def test_scrub_reads_at_most_the_rate_it_is_given(tmp_path):
    with KeepServer([tmp_path / "v"], fsync=False) as s, KeepClient([s.url], copies=1) as kc:
        for i in range(4):
            kc.put(bytes([i]) * 300_000)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    scrubber = Scrubber(s.blocks, rate=100_000, clock=lambda: now[0], sleep=sleep)
    report = scrubber.scrub_once()
    assert report.bytes == 1_200_000
    assert abs(now[0] - 12.0) < 1e-6  # 1.2 MB at 100 kB/s
    assert max(slept) <= 300_000 / 100_000 + 1e-6  # throttled per chunk read, not once at the end


def test_quarantine_spares_a_copy_replaced_since_it_was_read(tmp_path):
    with KeepServer([tmp_path / "v"], fsync=False) as s, KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"replaced meanwhile")
        path = s.volumes[0].store.find(loc.md5)
        assert path is not None
        stale_inode = path.stat().st_ino + 1  # what the scrub read was another file
        assert not s.blocks.quarantine(Found(s.volumes[0], path, loc.size), loc.md5, stale_inode)
        assert kc.get(loc) == b"replaced meanwhile"


def test_keep_serve_scrub_interval_quarantines_a_damaged_copy(tmp_path):
    volume = tmp_path / "v"
    with KeepServer([volume], fsync=False) as s, KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"damaged before the server starts")
        flip_a_byte(s, loc)
    proc = subprocess.Popen(
        [sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0", "--volume", str(volume),
         "--scrub-interval", "3600", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a scrub that never logs must fail the test, not hang it
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("listening on ")
        for line in proc.stderr:  # the first pass starts at once and logs what it moved aside
            if "quarantined" in line:
                break
        assert loc.md5 in line and "does not match its name" in line
        assert [p.name.split(".")[0] for p in volume.glob("*/*.quarantine.*")] == [loc.md5]
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
