"""keep serve --no-fsync: the flag reaches the volumes (it was once parsed and then ignored)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keepstore import KeepClient
from keepstore.cli import build_parser
from keepstore.cli.serve import build_server
from keepstore.local import StrPath
from keepstore.server.disk import FileOps


class CountingOps(FileOps):
    """The real file-system calls, counting the syncs."""

    def __init__(self) -> None:
        self.syncs = 0

    def fsync(self, fd: int) -> None:
        self.syncs += 1
        super().fsync(fd)

    def fsync_dir(self, path: StrPath) -> None:
        self.syncs += 1
        super().fsync_dir(path)


@pytest.mark.parametrize(("flags", "synced"), [([], True), (["--no-fsync"], False)])
def test_no_fsync_reaches_every_volume_and_its_writes(tmp_path: Path, flags: list[str], synced: bool) -> None:
    volumes = [tmp_path / "v0", tmp_path / "v1"]
    args = build_parser().parse_args(["serve", "--listen", "127.0.0.1:0", "--create", "--quiet",
                                      *(a for v in volumes for a in ("--volume", str(v))), *flags])
    server = build_server(args)
    assert [v.fsync for v in server.volumes] == [synced, synced]
    ops = CountingOps()
    for volume in server.volumes:
        volume.ops = ops
    server.start()
    try:
        with KeepClient(services=[server.url], token="t", copies=1) as kc:
            loc = kc.put(os.urandom(4096))
            assert kc.get(loc)
    finally:
        server.stop()
    assert (ops.syncs > 0) is synced
