"""Helpers for tests that mount for real through FUSE: skip reasons, environments, waiting on mounts."""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_processes import private_env

MOUNT_WAIT = 30.0


def fuse_missing() -> str | None:
    """Why a real FUSE mount cannot work here, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable by this user"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is not installed (Debian: apt-get install fuse3)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian: apt-get install fuse3)"
    return None


def keep_env(tmp_path: Path) -> dict[str, str]:
    """An environment with its own home, caches and local store under *tmp_path*."""
    return private_env(tmp_path, KEEP_LOCAL_STORE=str(tmp_path / "store"), FUSE_LIBRARY_NAME="fuse3",
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def keep(env: dict[str, str], *args: str, timeout: float = 120,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keepstore", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, input=input)


def keep_put(env: dict[str, str], path: Path) -> str:
    result = keep(env, "put", "--no-progress", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_for(condition: Callable[[], bool], what: str, limit: float = MOUNT_WAIT,
             alive: subprocess.Popen[str] | None = None) -> None:
    """Poll *condition* until true; fail naming *what* after *limit* s or when *alive* exits first."""
    deadline = time.monotonic() + limit
    while not condition():
        if alive is not None and alive.poll() is not None:
            err = alive.stderr.read() if alive.stderr else ""
            pytest.fail(f"process exited with {alive.returncode} before {what}: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {limit} s")
        time.sleep(0.02)  # the mount table has no change notification to wait on


def in_mount_table(mountpoint: Path) -> bool:
    """True while the kernel lists *mountpoint* (also a dead FUSE mount, which ``ismount`` misses)."""
    target = os.path.abspath(mountpoint)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


def unmount(mountpoint: Path) -> None:
    """Lazy-unmount whatever is left at *mountpoint* (teardown, or the kernel's side of a killed mount)."""
    if in_mount_table(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, limit: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


@contextlib.contextmanager
def mounted(env: dict[str, str], mountpoint: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``keep mount ARGS... MOUNTPOINT --foreground`` as a subprocess; stopped and unmounted afterwards."""
    mountpoint.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "keepstore", "mount", *args, str(mountpoint), "--foreground"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.ismount(mountpoint), f"mounting {mountpoint}", alive=proc)
        yield proc
    finally:
        stop(proc)
        unmount(mountpoint)
