"""Admission: slots and connections counted under one plain lock; drain still waits for a release."""

from __future__ import annotations

import threading

from keepstore.server.admission import Admission


def test_slots_run_out_and_come_back() -> None:
    admission = Admission(max_requests=2)
    assert admission.admit() and admission.admit()
    assert not admission.admit()
    admission.release()
    assert admission.in_flight == 1
    assert admission.admit()


def test_drain_waits_for_the_request_in_flight_and_wakes_on_its_release() -> None:
    admission = Admission(max_requests=4)
    assert admission.admit()
    drained = threading.Event()

    def drain() -> None:
        admission.drain(grace=60)
        drained.set()

    waiter = threading.Thread(target=drain, daemon=True)
    waiter.start()
    # Not an early return: with a request in flight drain() is still waiting a while later.
    assert not drained.wait(0.2)
    admission.release()  # the notify drain() waits for, not its 60 s grace
    assert drained.wait(30)
    waiter.join(30)
    assert admission.in_flight == 0


def test_release_without_a_drain_keeps_counting() -> None:
    admission = Admission(max_requests=1)
    for _ in range(1000):
        assert admission.admit()
        admission.release()
    assert admission.in_flight == 0
