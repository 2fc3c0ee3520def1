"""keep serve --workers announces "listening" only once every worker reports its socket listens."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from keepstore.cli.serve import wait_for_workers

LOG = logging.getLogger("test")


def test_it_returns_once_every_worker_has_reported() -> None:
    r, w = os.pipe()
    returned = threading.Event()

    def wait() -> None:
        wait_for_workers(r, 2, LOG)
        returned.set()

    thread = threading.Thread(target=wait)
    thread.start()
    os.write(w, b".")
    assert not returned.wait(0.2)  # one of two reported: still waiting
    os.write(w, b".")
    assert returned.wait(10)
    thread.join()
    os.close(w)
    with pytest.raises(OSError):  # the read end is closed once done
        os.fstat(r)


def test_a_worker_that_dies_before_listening_does_not_hold_the_parent(caplog) -> None:
    r, w = os.pipe()
    os.write(w, b".")
    os.close(w)  # the only writers are gone: one of two reported
    with caplog.at_level(logging.WARNING, logger="test"):
        wait_for_workers(r, 2, LOG)
    assert "1 of 2 worker(s) exited before listening" in caplog.text


def test_it_gives_up_after_its_timeout(caplog) -> None:
    r, w = os.pipe()
    with caplog.at_level(logging.WARNING, logger="test"):
        wait_for_workers(r, 1, LOG, timeout=0.0)
    os.close(w)
    assert "1 of 1 worker(s) not listening" in caplog.text
