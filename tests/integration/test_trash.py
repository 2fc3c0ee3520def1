"""keep serve trash: DELETE (system token) moves a block to its volume's trash, untrash restores it, the trash empties."""

from __future__ import annotations

import email.utils
import http.client
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keepstore import KeepClient
from keepstore.locator import Locator
from keepstore.server import KeepServer
from keepstore.server.blocks import Blocks, Found
from keepstore.server.trash import TrashPolicy, list_trash

SYSTEM = "system-token-for-trash-tests"
DAY = 86400.0


class Clock:
    """A unix clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def request(server: KeepServer | str, method: str, path: str, token: str | None = SYSTEM,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    url = server if isinstance(server, str) else server.url
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(tmp_path: Path, clock: Clock):
    with KeepServer([tmp_path / "v0"], system_token=SYSTEM, fsync=False, trash_min_age=0, clock=clock) as s:
        yield s


@pytest.fixture
def client(server: KeepServer):
    with KeepClient([server.url], copies=1) as kc:
        yield kc


def block_file(server: KeepServer, loc: Locator) -> Path:
    path = server.volumes[0].store.find(loc.md5)
    assert path is not None, f"{loc} is not on the volume"
    return path


def absent(server: KeepServer, loc: Locator) -> bool:
    return server.volumes[0].store.find(loc.md5) is None


def index(server: KeepServer) -> bytes:
    status, _, body = request(server, "GET", "/index")
    assert status == 200
    return body


def test_delete_needs_the_system_token(server, client):
    loc = client.put(b"guarded")
    assert request(server, "DELETE", f"/{loc}", token=None)[0] == 401
    assert request(server, "DELETE", f"/{loc}", token="not-the-system-token")[0] == 403
    assert request(server, "PUT", f"/untrash/{loc}", token=None)[0] == 401
    assert request(server, "PUT", f"/untrash/{loc}", token="nope")[0] == 403
    assert client.get(loc) == b"guarded"


def test_a_server_without_a_system_token_refuses_every_delete(tmp_path):
    with KeepServer([tmp_path / "v"], fsync=False, trash_min_age=0) as s, KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"stays")
        assert request(s, "DELETE", f"/{loc}", token="anything")[0] == 403
        assert kc.get(loc) == b"stays"


def test_deleted_block_is_in_the_trash_and_neither_served_nor_listed(server, client, clock):
    loc = client.put(b"to the trash")
    status, headers, body = request(server, "DELETE", f"/{loc}")
    assert (status, headers["X-Keep-Trashed"], body) == (200, "1", b"")
    assert absent(server, loc)
    assert request(server, "GET", f"/{loc}")[0] == 404
    assert request(server, "HEAD", f"/{loc}")[0] == 404
    assert loc.md5.encode() not in index(server)
    [trashed] = list_trash(server.volumes[0].path)
    assert trashed.md5 == loc.md5 and trashed.size == loc.size
    assert trashed.deadline == int(clock.now + 14 * DAY)
    assert trashed.path.parent == server.volumes[0].path / loc.md5[:3]  # one rename, same directory


def test_untrash_restores_the_block_and_refreshes_its_time(server, client, clock):
    loc = client.put(b"come back")
    os.utime(block_file(server, loc), (1.6e9, 1.6e9))
    assert request(server, "DELETE", f"/{loc}")[0] == 200
    status, _, body = request(server, "PUT", f"/untrash/{loc}")
    assert (status, body) == (200, b"")
    assert client.get(loc) == b"come back"
    assert f"{loc.md5}+{loc.size} ".encode() in index(server)
    assert block_file(server, loc).stat().st_mtime > 1.6e9 + DAY  # a gc's grace counts from the untrash
    assert list(list_trash(server.volumes[0].path)) == []


def test_untrash_and_delete_of_absent_blocks_are_404_and_bad_locators_400(server):
    absent = "0" * 32
    assert request(server, "DELETE", f"/{absent}+3")[0] == 404
    assert request(server, "PUT", f"/untrash/{absent}+3")[0] == 404
    assert request(server, "DELETE", "/not-a-locator")[0] == 400
    assert request(server, "PUT", "/untrash/not-a-locator")[0] == 400


def test_delete_with_a_wrong_size_trashes_nothing(server, client):
    loc = client.put(b"seven b")
    assert request(server, "DELETE", f"/{loc.md5}+{loc.size + 1}")[0] == 404
    assert client.get(loc) == b"seven b"


def test_a_block_younger_than_the_min_age_is_kept_with_200(tmp_path, clock):
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False, trash_min_age=DAY, clock=clock) as s, \
            KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"young")
        status, headers, _ = request(s, "DELETE", f"/{loc}")
        assert (status, headers["X-Keep-Trashed"]) == (200, "0")
        assert kc.get(loc) == b"young"
        clock.now += DAY + 1
        status, headers, _ = request(s, "DELETE", f"/{loc}")
        assert (status, headers["X-Keep-Trashed"]) == (200, "1")
        assert request(s, "GET", f"/{loc}")[0] == 404


def test_the_min_age_defaults_to_the_signing_ttl(tmp_path):
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False, signing_ttl=3 * 86400) as s:
        assert s.blocks.trash_policy.min_age == 3 * DAY


def test_if_unmodified_since_keeps_a_block_touched_after_it(server, client):
    loc = client.put(b"touched later")
    path = block_file(server, loc)
    os.utime(path, (1.7e9, 1.7e9))
    before = email.utils.formatdate(1.7e9 - 60, usegmt=True)
    status, _, _ = request(server, "DELETE", f"/{loc}", headers={"If-Unmodified-Since": before})
    assert status == 412
    assert client.get(loc) == b"touched later"
    after = email.utils.formatdate(1.7e9, usegmt=True)
    assert request(server, "DELETE", f"/{loc}", headers={"If-Unmodified-Since": after})[0] == 200
    assert absent(server, loc)


def test_trash_is_emptied_only_after_its_lifetime(server, client, clock):
    loc = client.put(b"expiring")
    assert request(server, "DELETE", f"/{loc}")[0] == 200
    clock.now += 14 * DAY - 1
    assert server.empty_trash() == 0
    assert len(list(list_trash(server.volumes[0].path))) == 1
    clock.now += 1
    assert server.empty_trash() == 1
    assert list(list_trash(server.volumes[0].path)) == []
    assert request(server, "PUT", f"/untrash/{loc}")[0] == 404


def test_the_background_emptier_removes_expired_trash(tmp_path, clock):
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False, trash_min_age=0, trash_lifetime=60,
                    trash_check_interval=0.05, clock=clock) as s, KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"emptied by the server")
        assert request(s, "DELETE", f"/{loc}")[0] == 200
        clock.now += 61
        passes = s.trash_emptier.passes
        assert s.trash_emptier.wait_for_passes(passes + 2, timeout=30)  # one full pass after the clock moved
        assert list(list_trash(s.volumes[0].path)) == []


def test_lifetime_zero_deletes_at_once(tmp_path, clock):
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False, trash_min_age=0, trash_lifetime=0,
                    clock=clock) as s, KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"gone for good")
        assert request(s, "DELETE", f"/{loc}")[0] == 200
        assert sorted(p.name for p in (s.volumes[0].path / loc.md5[:3]).iterdir()) == []
        assert request(s, "PUT", f"/untrash/{loc}")[0] == 404


def test_delete_trashes_the_copy_on_every_volume_and_untrash_restores_each(tmp_path, clock):
    from keepstore.server import parse_volume

    volumes = [parse_volume(f"{tmp_path / 'hot'}:hot"), parse_volume(str(tmp_path / "plain"))]
    with KeepServer(volumes, system_token=SYSTEM, fsync=False, trash_min_age=0, clock=clock) as s, \
            KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"on two volumes", storage_classes=["hot", "default"])
        assert request(s, "DELETE", f"/{loc}")[1]["X-Keep-Trashed"] == "2"
        assert [v.store.find(loc.md5) for v in s.volumes] == [None, None]
        assert request(s, "PUT", f"/untrash/{loc}")[0] == 200
        assert all(v.store.find(loc.md5) is not None for v in s.volumes)


def test_a_put_of_a_trashed_block_stores_it_again(server, client):
    loc = client.put(b"written twice")
    assert request(server, "DELETE", f"/{loc}")[0] == 200
    assert client.put(b"written twice") == loc
    assert client.get(loc) == b"written twice"


def test_a_put_racing_a_delete_never_confirms_a_copy_that_went_to_the_trash(tmp_path, clock):
    """The DELETE lands between the PUT finding the existing copy and confirming it: the PUT
    must notice and write a new copy rather than answer 200 for a block in the trash."""

    class RacingBlocks(Blocks):
        def copies(self, md5: str, size: int) -> list[Found]:
            found = super().copies(md5, size)
            if found:
                assert self.trash(md5, size)[0].removed  # a DELETE lands right here
            return found

    root = tmp_path / "v"
    with KeepServer([root], system_token=SYSTEM, fsync=False) as s, KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"raced")
        s.blocks = RacingBlocks(s.volumes, TrashPolicy(min_age=0), clock)
        s.restart()  # the handlers take the new Blocks
        assert kc.put(b"raced") == loc
        assert s.volumes[0].store.find(loc.md5) is not None
        assert kc.get(loc) == b"raced"


def test_a_racing_delete_keeps_a_block_that_a_put_touched_first(tmp_path, clock):
    """The PUT's touch and the DELETE's age check are serialised by the block's lock: a DELETE
    that waits for the lock sees the fresh time and keeps the block."""
    with KeepServer([tmp_path / "v"], system_token=SYSTEM, fsync=False, trash_min_age=DAY, clock=clock) as s, \
            KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"touched in time")
        path = block_file(s, loc)
        os.utime(path, (clock.now - 2 * DAY, clock.now - 2 * DAY))
        lock = s.blocks.lock(loc.md5)
        outcome: list[object] = []
        with lock:  # the PUT's touch holds the lock...
            deleter = threading.Thread(target=lambda: outcome.extend(s.blocks.trash(loc.md5, loc.size)))
            deleter.start()
            os.utime(path)  # ...and refreshes the time before the DELETE can look
        deleter.join(10)
        assert [o.value for o in outcome] == ["young"]  # type: ignore[attr-defined]
        assert kc.get(loc) == b"touched in time"


def test_trash_survives_a_restart_and_untrash_works_after_it(tmp_path, clock):
    root = tmp_path / "v"
    with KeepServer([root], system_token=SYSTEM, fsync=True, trash_min_age=0, clock=clock) as s, \
            KeepClient([s.url], copies=1) as kc:
        loc = kc.put(b"survives")
        assert request(s, "DELETE", f"/{loc}")[0] == 200
    with KeepServer([root], system_token=SYSTEM, fsync=True, clock=clock) as s, KeepClient([s.url], copies=1) as kc:
        assert request(s, "GET", f"/{loc}")[0] == 404
        assert request(s, "PUT", f"/untrash/{loc}")[0] == 200
        assert kc.get(loc) == b"survives"


def test_keep_serve_process_trashes_and_untrashes(tmp_path):
    token_file = tmp_path / "system-token"
    token_file.write_text(SYSTEM + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0", "--volume", str(tmp_path / "v"),
         "--system-token-file", str(token_file), "--trash-min-age", "0", "--trash-lifetime", "3600", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), (line, proc.stderr.read() if proc.stderr else "")
        url = line.split()[-1]
        with KeepClient([url], copies=1) as kc:
            loc = kc.put(b"via keep serve")
            assert request(url, "DELETE", f"/{loc}")[0] == 200
            assert request(url, "GET", f"/{loc}")[0] == 404
            assert request(url, "PUT", f"/untrash/{loc}")[0] == 200
            assert kc.get(loc) == b"via keep serve"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_untrash_keeps_a_copy_written_since_the_delete(server, client):
    loc = client.put(b"written again")
    assert request(server, "DELETE", f"/{loc}")[0] == 200
    assert client.put(b"written again") == loc
    fresh = block_file(server, loc).stat().st_ino
    assert request(server, "PUT", f"/untrash/{loc}")[0] == 200
    assert block_file(server, loc).stat().st_ino == fresh


def test_a_server_killed_during_deletes_leaves_each_block_whole_in_place_or_in_the_trash(tmp_path):
    """kill -9 while DELETEs stream in: every block is afterwards exactly one whole file, under
    its name or under its trash name, never torn and never lost (a rename is atomic)."""
    volume = tmp_path / "v"
    token_file = tmp_path / "system-token"
    token_file.write_text(SYSTEM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0", "--volume", str(volume),
         "--system-token-file", str(token_file), "--trash-min-age", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with KeepClient([url], copies=1) as kc:
            blocks = {kc.put(f"block {i} ".encode() * 100): f"block {i} ".encode() * 100 for i in range(200)}
        deleted = threading.Event()

        def deleter() -> None:
            for n, loc in enumerate(blocks):
                try:
                    request(url, "DELETE", f"/{loc}")
                except OSError:  # the server is gone
                    return
                if n == 50:
                    deleted.set()

        thread = threading.Thread(target=deleter)
        thread.start()
        assert deleted.wait(60)
        proc.kill()
        thread.join(60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    for loc, data in blocks.items():
        names = [p for p in (volume / loc.md5[:3]).iterdir() if p.name.startswith(loc.md5)]
        assert len(names) == 1, names
        assert names[0].name == loc.md5 or names[0].name.startswith(f"{loc.md5}.trash.")
        assert names[0].read_bytes() == data
    trashed = [loc for loc in blocks if (volume / loc.md5[:3] / loc.md5).exists() is False]
    assert 50 < len(trashed) <= 200
