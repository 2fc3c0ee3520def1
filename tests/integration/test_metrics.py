"""Metrics: ``keep serve``'s Prometheus ``/metrics`` and `KeepClient.stats()` per service."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import TOKEN, keep_command, private_env, refused_url
from prometheus_client.parser import text_string_to_metric_families

from keepstore import KeepClient
from keepstore.errors import ReadError
from keepstore.server import KeepServer
from keepstore.server.volumes import Volume
from keepstore.testing import wait_until

SYSTEM = "opclient-system-token-0123456789"


def scrape(url: str, token: str | None = SYSTEM) -> tuple[int, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """GET /metrics: the status and every sample as {(name, sorted labels): value}."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "metrics", headers=headers), timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            text = r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return 200, samples


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KeepServer]:
    volumes = [Volume(tmp_path / "a", fsync=False), Volume(tmp_path / "b", fsync=False, capacity=10 << 20)]
    with KeepServer(volumes, system_token=SYSTEM) as server:
        yield server


def test_metrics_need_the_system_token_as_the_index_does(server: KeepServer) -> None:
    assert scrape(server.url, None)[0] == 401
    assert scrape(server.url, TOKEN)[0] == 403
    assert scrape(server.url)[0] == 200


def test_metrics_count_requests_bytes_and_latency(server: KeepServer) -> None:
    data = b"x" * 1000
    with KeepClient([server.url], token=TOKEN) as kc:
        loc = kc.put(data, copies=1)
        assert kc.get(loc) == data
        kc.head(loc)
        with pytest.raises(ReadError):
            kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3", request_id=None)
    wait_until(lambda: server.in_flight == 0, 10, what="every request counted (each is, as it ends)")
    status, samples = scrape(server.url)
    assert status == 200
    requests = {labels: value for (name, labels), value in samples.items() if name == "keep_server_requests_total"}
    assert requests[(("method", "PUT"), ("status", "200"))] == 1
    assert requests[(("method", "GET"), ("status", "200"))] == 1
    assert requests[(("method", "HEAD"), ("status", "200"))] == 1
    assert requests[(("method", "GET"), ("status", "404"))] >= 1
    assert samples[("keep_server_received_bytes_total", ())] == len(data)
    sent = samples[("keep_server_sent_bytes_total", ())]
    assert sent == sum(r.bytes_out for r in server.requests if r.path != "/metrics")
    assert samples[("keep_server_request_duration_seconds_count", (("method", "PUT"),))] == 1
    assert samples[("keep_server_request_duration_seconds_bucket", (("le", "+Inf"), ("method", "GET")))] >= 2
    assert samples[("keep_server_requests_in_flight", ())] == 1  # the scrape itself


def test_metrics_show_each_volumes_usage(server: KeepServer) -> None:
    with KeepClient([server.url], token=TOKEN) as kc:
        kc.put(b"y" * 5000, copies=1)
    _, samples = scrape(server.url)
    for volume in server.volumes:
        assert samples[("keep_server_volume_free_bytes", (("volume", str(volume.path)),))] > 0
        assert samples[("keep_server_volume_used_bytes", (("volume", str(volume.path)),))] > 0
    capped = str(server.volumes[1].path)
    assert samples[("keep_server_volume_capacity_bytes", (("volume", capped),))] == 10 << 20
    assert samples[("keep_server_volume_block_bytes", (("volume", capped),))] == server.volumes[1].used
    assert ("keep_server_volume_capacity_bytes", (("volume", str(server.volumes[0].path)),)) not in samples


def test_public_metrics_need_no_token(tmp_path: Path) -> None:
    with KeepServer([tmp_path / "v"], metrics_public=True) as server:
        assert scrape(server.url, None)[0] == 200


def test_keep_serve_metrics_public_through_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    process = subprocess.Popen(keep_command("serve", "--create", "--volume", str(tmp_path / "v"), "--listen",
                                            "127.0.0.1:0", "--metrics-public", "--quiet"),
                               env=private_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        url = line.split()[-1]
        status, samples = scrape(url, None)
        assert status == 200 and ("keep_server_requests_in_flight", ()) in samples
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_client_stats_give_each_services_requests_errors_and_latency(server: KeepServer) -> None:
    down = refused_url()
    ticks = iter(range(1000))
    with KeepClient([server.url, down], token=TOKEN, retries=0, clock=lambda: float(next(ticks))) as kc:
        loc = kc.put(b"foo", copies=1)
        kc.get(loc)
        stats = kc.stats()
    up = stats.services[server.url]
    assert up.errors == 0 and up.requests >= 2
    assert up.mean_latency == 1.0 and up.max_seconds == 1.0  # each request took one tick
    if down in stats.services:  # placement may never have asked it
        assert stats.services[down].errors == stats.services[down].requests == stats.failures[down]
    with KeepClient([down], retries=2, sleep=lambda s: None) as kc, pytest.raises(ReadError):
        kc.get(loc)
    failed = kc.stats().services[down]
    assert (failed.requests, failed.errors) == (3, 3)
