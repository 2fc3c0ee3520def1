"""`ServiceHealth` and `HedgePolicy`: the hedge delay learned from first bytes, failure scores that
decay on an injected clock, and the one-at-a-time `Transport.race` of transports that cannot overlap."""

from __future__ import annotations

import pytest

from keepstore.client import HedgePolicy
from keepstore.client.health import ServiceHealth
from keepstore.errors import ConfigError
from keepstore.services import Service
from keepstore.transport import MockTransport, Request, Response, TransportError


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def services(n: int) -> list[Service]:
    return [Service(f"zzzzz-bi6l4-{i:015d}", f"http://127.0.0.1:{9000 + i}/") for i in range(n)]


def test_the_delay_is_the_initial_one_until_enough_first_bytes_were_timed() -> None:
    health = ServiceHealth(HedgePolicy(initial=0.2, min_samples=3, floor=0.001, multiplier=1))
    health.first_byte("a", 0.01)
    health.first_byte("a", 0.01)
    assert health.hedge_delay() == 0.2
    health.first_byte("a", 0.01)
    assert health.hedge_delay() == 0.01


def test_the_delay_is_a_multiple_of_the_percentile_between_floor_and_cap() -> None:
    health = ServiceHealth(HedgePolicy(percentile=90, multiplier=2, min_samples=1, floor=0.005, cap=0.5, window=10))
    for ms in range(1, 11):  # 1..10 ms
        health.first_byte("a", ms / 1000)
    assert health.hedge_delay() == pytest.approx(0.018)  # twice the 9th of 10
    for _ in range(10):  # the window forgets the old, slower samples
        health.first_byte("a", 0.001)
    assert health.hedge_delay() == 0.005  # the floor
    for _ in range(10):
        health.first_byte("a", 2.0)
    assert health.hedge_delay() == 0.5  # the cap


def test_the_default_floor_keeps_fast_servers_from_being_asked_twice() -> None:
    health = ServiceHealth()
    for _ in range(64):
        health.first_byte("a", 0.0003)  # loopback: 0.3 ms
    assert health.hedge_delay() == HedgePolicy().floor == 0.05


def test_a_slow_replica_does_not_teach_the_client_to_wait_for_it() -> None:
    health = ServiceHealth(HedgePolicy(min_samples=4, floor=0.001, multiplier=2))
    for _ in range(8):
        health.first_byte("fast", 0.002)
        health.first_byte("late", 0.2)  # answered before its hedge could: still no reason to wait
    assert health.hedge_delay() == 0.004  # twice the fast one's, not the late one's


def test_a_failure_moves_a_service_back_until_it_decays() -> None:
    clock = Clock()
    health = ServiceHealth(HedgePolicy(half_life=4.0, threshold=0.5), clock)
    a, b, c = services(3)
    health.failed(a.root)
    assert health.order([a, b, c]) == [b, c, a]
    health.failed(b.root)
    health.failed(b.root)
    assert health.order([a, b, c]) == [c, a, b]  # least failed first among the failed
    clock.now += 4.0
    assert health.score(a.root) == 0.5 and health.order([a, b, c]) == [c, a, b]
    clock.now += 4.0
    assert health.score(a.root) == 0.25 and health.order([a, b, c]) == [a, c, b]  # a is back
    clock.now += 8.0
    assert health.order([a, b, c]) == [a, b, c]  # b healed too: probe order again


def test_failures_add_up_from_their_decayed_score() -> None:
    clock = Clock()
    health = ServiceHealth(HedgePolicy(half_life=10.0), clock)
    health.failed("x")
    clock.now += 10.0
    health.failed("x")
    assert health.score("x") == 1.5


@pytest.mark.parametrize("bad, word", [
    ({"percentile": 0}, "percentile"), ({"multiplier": 0}, "multiplier"), ({"floor": 2.0, "cap": 1.0}, "floor"),
    ({"half_life": 0}, "half_life"), ({"window": 0}, "window"),
])
def test_hedge_policy_rejects_nonsense(bad: dict[str, float], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        HedgePolicy(**bad)  # type: ignore[arg-type]


def test_a_transport_that_cannot_overlap_races_one_request_at_a_time() -> None:
    seen: list[str] = []
    first_bytes: list[int] = []

    def handler(request: Request) -> Response:
        seen.append(request.url)
        if request.url.endswith("a"):
            raise TransportError("connection refused", connect=True)
        return Response(404 if request.url.endswith("b") else 200, body=b"x")

    transport = MockTransport(handler)
    requests = [Request("GET", f"http://127.0.0.1:1/{name}", on_first_byte=first_bytes.append) for name in "abcd"]
    started: list[int] = []
    race = transport.race(requests, hedge_after=0.0, on_start=started.append)
    outcomes: list[tuple[int, object]] = []
    for finished in race:
        if finished.response is not None:
            outcomes.append((finished.position, finished.response.status))
        else:
            assert finished.error is not None
            outcomes.append((finished.position, finished.error.reason))
        if finished.response is not None and finished.response.status == 200:
            break
    race.close()
    assert outcomes == [(0, "connection refused"), (1, 404), (2, 200)]
    assert started == [0, 1, 2] and seen[-1].endswith("c")  # "d" never asked
    assert first_bytes == [404, 200]
