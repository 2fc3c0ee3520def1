"""``keep mount --exec``: run a command while a mount is up, forwarding signals, and report its status."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["die_with_parent", "run_command", "stop_server", "wait_until_mounted"]

log = logging.getLogger(__name__)

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across exec, so reset them
# (as subprocess's restore_signals does) or `yes | head` in the command would print EPIPE errors.
_DEFAULTS = (*_FORWARDED, signal.SIGPIPE, signal.SIGXFSZ)
_PR_SET_PDEATHSIG = 1


def wait_until_mounted(pid: int, mountpoint: str, limit: float = 60.0) -> int:
    """In the parent of a mount process: 0 once *mountpoint* is mounted, else the child's status (1
    when it is still not up after *limit* seconds)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) or 1
        if os.path.ismount(mountpoint):
            return 0
        time.sleep(0.05)  # polling the mount table: the kernel offers no event for a new mount
    print(f"keep: error: {mountpoint} did not appear within {limit:.0f} s", file=sys.stderr)
    return 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send *sig* to this process when its parent dies (a mount outliving ``--exec``)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the parent's finally still stops us
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N: 128+N, as a shell reports it


def run_command(argv: Sequence[str], *, env: dict[str, str] | None = None) -> int:
    """Run *argv* to the end and return its exit status (128+N when killed by signal N, 127 when
    it cannot be started).

    SIGINT, SIGTERM and SIGHUP sent to this process (``kill``) are passed on to the command; a
    Ctrl-C at the terminal reaches the command directly (it is in our process group), so it is not
    sent a second time. The command is waited for either way, so the caller can unmount after it.
    """
    waited = {*_FORWARDED, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        try:
            pid = os.posix_spawnp(argv[0], list(argv), dict(os.environ if env is None else env),
                                  setsigmask=old_mask, setsigdef=_DEFAULTS)
        except OSError as exc:
            print(f"keep: error: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
            return 127
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _exit_code(status)
            info = signal.sigwaitinfo(waited)
            if info.si_signo != signal.SIGCHLD and info.si_code <= 0:  # sent by a process, not the tty
                log.info("passing signal %s on to %s", info.si_signo, argv[0])
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    os.kill(pid, info.si_signo)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def stop_server(pid: int, mountpoint: str, limit: float = 120.0) -> int:
    """Stop the mount process *pid* (SIGTERM: libfuse unmounts and it exits); its exit status.

    A server still running after *limit* seconds is killed and the mount detached.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            log.warning("mount process %s did not stop in %.0f s; killing it", pid, limit)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.05)  # waiting for libfuse to finish its unmount
    if os.path.ismount(mountpoint):  # a killed server leaves the mount behind
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, timeout=30, check=False)
    return os.waitstatus_to_exitcode(status)
