"""Block locks shared through a file exclude other processes, stripe by stripe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from keepstore.server.locks import BlockLocks

_TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
except BlockingIOError:
    print("held")
else:
    print("free")
"""


def _other_process_sees(path: Path, offset: int) -> str:
    return subprocess.run([sys.executable, "-c", _TRY, str(path), str(offset)], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_a_held_block_lock_is_held_for_other_processes_too(tmp_path: Path) -> None:
    locks = BlockLocks(tmp_path / "locks")
    with locks("ab" + "0" * 30):
        assert _other_process_sees(tmp_path / "locks", 0xAB) == "held"
        assert _other_process_sees(tmp_path / "locks", 0xAC) == "free"  # another stripe
    assert _other_process_sees(tmp_path / "locks", 0xAB) == "free"


def test_unshared_locks_need_no_file(tmp_path: Path) -> None:
    locks = BlockLocks()
    with locks("ff" + "0" * 30):
        assert locks.fd() is None
    assert list(tmp_path.iterdir()) == []
