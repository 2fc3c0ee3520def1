"""AsyncKeepClient against a keep serve cluster: awaitable calls, gather, running loops, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from keepstore import BlockNotFound, KeepClient, Locator
from keepstore.aio import AsyncKeepClient
from keepstore.server.faults import Gate
from keepstore.testing import KeepCluster

MISSING = "d41d8cd98f00b204e9800998ecf8427f+1"


async def _round_trip(akc: AsyncKeepClient, data: bytes) -> bytes:
    loc = await akc.put(data)
    assert await akc.head(loc) is True and await akc.exists(loc) is True
    return await akc.get(loc)


def test_put_get_head_exists_are_awaitable(keep_cluster: KeepCluster) -> None:
    async def main() -> None:
        async with AsyncKeepClient(services=keep_cluster.urls, token=keep_cluster.token) as akc:
            assert await _round_trip(akc, b"async hello") == b"async hello"
            assert await akc.exists(MISSING) is False
            with pytest.raises(BlockNotFound):
                await akc.get(MISSING)
            result = await akc.put_block(b"with replicas", copies=2)
            assert result.replicas == 2

    asyncio.run(main())


def test_one_thousand_small_puts_from_asyncio_gather(keep_cluster: KeepCluster) -> None:
    blocks = [f"gathered block {i:04d}".encode() for i in range(1000)]

    async def main() -> list[Locator]:
        async with AsyncKeepClient(keep_cluster.client()) as akc:
            return await asyncio.gather(*(akc.put(data) for data in blocks))

    with keep_cluster.client() as kc:
        locs = asyncio.run(main())
        assert [loc.bare() for loc in locs] == [Locator.for_data(d) for d in blocks]
        assert kc.exists_many(locs) == [True] * 1000


def test_works_inside_a_loop_that_is_already_running_in_another_thread(keep_cluster: KeepCluster) -> None:
    # As in Jupyter: the loop runs forever elsewhere and code is handed to it.
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        with keep_cluster.client() as kc:
            akc = AsyncKeepClient(kc)
            assert loop.is_running()
            future = asyncio.run_coroutine_threadsafe(_round_trip(akc, b"jupyter-style"), loop)
            assert future.result(timeout=30) == b"jupyter-style"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=10)
        loop.close()


def test_two_loops_in_two_threads_share_one_client(keep_cluster: KeepCluster) -> None:
    results: dict[str, bytes] = {}
    with keep_cluster.client() as kc:
        akc = AsyncKeepClient(kc)

        def in_thread() -> None:
            results["thread"] = asyncio.run(_round_trip(akc, b"from a thread's loop"))

        thread = threading.Thread(target=in_thread)
        thread.start()
        results["main"] = asyncio.run(_round_trip(akc, b"from the main loop"))
        thread.join(timeout=30)
    assert results == {"thread": b"from a thread's loop", "main": b"from the main loop"}


def test_the_loop_keeps_running_while_a_get_waits_on_the_network(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc:
        loc = kc.put(b"slow to read")
        gate = Gate()
        for server in keep_cluster.servers:
            server.faults.hold(gate, methods="GET", times=None, timeout=5)

        async def main() -> bytes:
            get = asyncio.ensure_future(AsyncKeepClient(kc).get(loc))
            # This coroutine runs on while the GET is held at its server; were the loop blocked
            # in the get, it would only get here after the hold's 5 s, and nothing would wait.
            await asyncio.get_running_loop().run_in_executor(None, gate.wait_for, 1)
            assert not get.done()
            gate.open()
            return await get

        assert asyncio.run(main()) == b"slow to read"


def test_cancelling_a_task_cancels_an_operation_not_yet_started(keep_cluster: KeepCluster) -> None:
    gate = Gate()
    for server in keep_cluster.servers:
        server.faults.hold(gate, methods="PUT", times=None)

    async def main() -> None:
        async with AsyncKeepClient(services=keep_cluster.urls, token=keep_cluster.token, threads=1) as akc:
            first = asyncio.ensure_future(akc.put(b"running"))
            queued = asyncio.ensure_future(akc.put(b"never started"))
            # the first put holds the only thread (its PUT waits at a server), the second is queued
            await asyncio.get_running_loop().run_in_executor(None, gate.wait_for, 1)
            queued.cancel()
            gate.open()
            with pytest.raises(asyncio.CancelledError):
                await queued
            await first

    asyncio.run(main())
    assert keep_cluster.holders(Locator.for_data(b"never started")) == []


def test_closing_a_wrapper_leaves_the_wrapped_client_open(keep_cluster: KeepCluster) -> None:
    kc = keep_cluster.client()

    async def main() -> None:
        async with AsyncKeepClient(kc) as akc:
            await akc.put(b"x")

    asyncio.run(main())
    assert kc.get(Locator.for_data(b"x")) == b"x"
    kc.close()


@pytest.mark.wall_clock  # not blocking the loop is a bound on time
def test_closing_an_owned_client_does_not_block_the_loop(keep_cluster: KeepCluster) -> None:
    async def main() -> KeepClient:
        akc = AsyncKeepClient(services=keep_cluster.urls, token=keep_cluster.token)
        await akc.put(b"y")
        start = time.monotonic()
        await akc.close()
        assert time.monotonic() - start < 5
        return akc.client

    client = asyncio.run(main())
    with pytest.raises(Exception, match="closed"):
        client.get(Locator.for_data(b"y"))


def test_client_and_options_together_are_a_type_error(keep_cluster: KeepCluster) -> None:
    with keep_cluster.client() as kc, pytest.raises(TypeError):
        AsyncKeepClient(kc, copies=1)


def test_from_env_with_nothing_configured_is_a_clear_no_services_error(tmp_path) -> None:
    from keepstore.errors import NoServicesError

    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c"), "XDG_DATA_HOME": str(tmp_path / "d")}
    with pytest.raises(NoServicesError, match="needs Keep services"):
        AsyncKeepClient.from_env(env)
