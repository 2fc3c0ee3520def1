"""kc.batch(), get_many and exists_many against a keep serve cluster: order, outcomes, raise policies."""

from __future__ import annotations

import pytest

from keepstore import BlockNotFound, KeepError, Locator, ReadError
from keepstore.batch import Outcome
from keepstore.testing import KeepCluster

MISSING = "d41d8cd98f00b204e9800998ecf8427f+1"


def test_wait_returns_outcomes_in_submission_order(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        stored = kc.put(b"already there")
        with kc.batch() as b:
            b.put(b"new block")
            b.get(stored)
            b.head(stored)
            outcomes = b.wait()
    assert [(o.index, o.op, o.ok) for o in outcomes] == [(0, "put", True), (1, "get", True), (2, "head", True)]
    assert isinstance(outcomes[0].value, Locator) and outcomes[0].value.bare() == Locator.for_data(b"new block")
    assert outcomes[1].value == b"already there"
    assert outcomes[2].result() is True


def test_default_policy_raises_the_first_failure(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc, pytest.raises(BlockNotFound), kc.batch() as b:
        b.put(b"fine")
        b.get(MISSING)
        b.wait()


def test_leaving_the_block_without_wait_waits_and_raises(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        with pytest.raises(BlockNotFound), kc.batch() as b:
            put = b.put(b"stored before the block ends")
            b.head(MISSING)
        assert put.done()


def test_never_policy_returns_failures_as_outcomes(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc, kc.batch(raise_for_status="never") as b:
        b.head(MISSING)
        b.put(b"ok")
        outcomes = b.wait()
    missing, ok = outcomes
    assert not missing.ok and isinstance(missing.error, BlockNotFound)
    with pytest.raises(BlockNotFound):
        missing.result()
    assert ok.ok


def test_a_set_of_acceptable_errors_is_returned_and_others_raised(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client(retries=0) as kc:
        with kc.batch() as b:
            b.head(MISSING)
            (outcome,) = b.wait(raise_for_status={BlockNotFound})
        assert isinstance(outcome.error, BlockNotFound)
        for server in keep_cluster.servers:
            server.stop(grace=1.0)
        with pytest.raises(ReadError) as caught, kc.batch(raise_for_status={BlockNotFound}) as b:
            b.head(MISSING)
        assert not isinstance(caught.value, BlockNotFound)


def test_first_failure_cancels_operations_not_yet_started(keep_cluster: KeepCluster) -> None:
    for server in keep_cluster.servers:
        server.faults.delay(0.3, methods="PUT", times=None)
    data = [f"slow put {i}".encode() for i in range(8)]
    with keep_cluster.client(threads=1) as kc:
        with pytest.raises(BlockNotFound), kc.batch() as b:
            b.get(MISSING)
            puts = [b.put(d) for d in data]
            b.wait()
        assert all(f.done() for f in puts)
        assert puts[-1].cancelled()
    assert keep_cluster.holders(Locator.for_data(data[-1])) == []


def test_an_exception_in_the_block_cancels_queued_work_and_propagates(keep_cluster: KeepCluster) -> None:
    for server in keep_cluster.servers:
        server.faults.delay(0.3, methods="PUT", times=None)
    with keep_cluster.client(threads=1) as kc:
        with pytest.raises(RuntimeError, match="user code"), kc.batch() as b:
            puts = [b.put(f"abandoned {i}".encode()) for i in range(5)]
            raise RuntimeError("user code failed")
        assert all(f.done() for f in puts) and puts[-1].cancelled()


def test_an_operation_cancelled_by_the_user_is_reported_not_raised(keep_cluster: KeepCluster) -> None:
    for server in keep_cluster.servers:
        server.faults.delay(0.3, methods="PUT", times=None)
    with keep_cluster.client(threads=1) as kc, kc.batch() as b:
        b.put(b"runs")
        cancelled = b.put(b"cancelled by the user")
        assert cancelled.cancel()
        outcomes = b.wait()
    assert outcomes[0].ok and outcomes[1].cancelled and not outcomes[1].ok


def test_a_finished_batch_takes_no_more_work(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        with kc.batch() as b:
            b.put(b"x")
        with pytest.raises(KeepError, match="finished"):
            b.put(b"y")


def test_an_unknown_policy_is_a_value_error(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        with pytest.raises(ValueError, match="raise_for_status"):
            kc.batch(raise_for_status="sometimes")
        with pytest.raises(ValueError, match="exception classes"):
            kc.batch(raise_for_status={"BlockNotFound"})  # type: ignore[arg-type]


def test_outcome_result_gives_value_or_raises() -> None:
    assert Outcome(0, "get", MISSING, value=b"x").result() == b"x"
    with pytest.raises(BlockNotFound):
        Outcome(0, "get", MISSING, error=BlockNotFound("gone")).result()


def test_get_many_and_exists_many_keep_the_order_asked(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        locs = [kc.put(f"many {i}".encode()) for i in range(5)]
        assert kc.get_many(reversed(locs)) == [f"many {i}".encode() for i in reversed(range(5))]
        assert kc.exists_many([locs[0], MISSING, str(locs[1])]) == [True, False, True]
        with pytest.raises(BlockNotFound):
            kc.get_many([locs[0], MISSING])


def test_one_thousand_small_puts_from_one_batch(keep_cluster: KeepCluster) -> None:
    blocks = [f"small block {i:04d}".encode() for i in range(1000)]
    with keep_cluster.client(copies=2) as kc:
        with kc.batch() as b:
            for data in blocks:
                b.put(data)
            outcomes = b.wait()
        assert len(outcomes) == 1000 and all(o.ok for o in outcomes)
        assert [o.value.bare() for o in outcomes] == [Locator.for_data(d) for d in blocks]  # type: ignore[union-attr]
        assert kc.exists_many(o.value for o in outcomes) == [True] * 1000  # type: ignore[misc]
    puts = sum(1 for server in keep_cluster.servers for r in server.requests if r.method == "PUT")
    assert puts == 2000


def test_concurrency_md_examples_run() -> None:
    import doctest
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "concurrency.md"
    result = doctest.testfile(str(path), module_relative=False,
                              optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0


def test_a_single_exception_class_is_a_policy_and_junk_is_a_value_error() -> None:
    from keepstore.batch import check_policy

    assert check_policy(BlockNotFound) == frozenset({BlockNotFound})
    for junk in (None, 3, "sometimes", [ValueError, "x"]):
        with pytest.raises(ValueError, match="raise_for_status"):
            check_policy(junk)  # type: ignore[arg-type]
