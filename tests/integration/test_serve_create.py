"""keep serve --volume: a directory that does not exist is an error unless --create is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keepstore.errors import ConfigError
from keepstore.server import parse_volume


def test_a_missing_volume_is_refused_with_the_path_and_the_way_out(tmp_path: Path) -> None:
    missing = tmp_path / "tyop" / "v"
    done = subprocess.run([sys.executable, "-m", "keepstore", "serve", "--listen", "127.0.0.1:0",
                           "--volume", f"{missing}:hot"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"keep: error: volume {str(missing)!r} does not exist; create it first, "
                                   f"or pass --create to have keep serve make it")
    assert not missing.exists() and not missing.parent.exists()


def test_a_file_as_volume_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        parse_volume(str(plain), create=False)


def test_create_makes_the_volume_and_the_server_starts(tmp_path: Path) -> None:
    volume = tmp_path / "new" / "v"
    proc = subprocess.Popen([sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0",
                             "--volume", str(volume), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        assert volume.is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_library_keeps_making_volumes_as_before(tmp_path: Path) -> None:
    volume = parse_volume(str(tmp_path / "lib" / "v"))
    assert volume.path.is_dir()
