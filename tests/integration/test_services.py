"""Service values, Arvados-identical probe order, and discovery from the Arvados API."""

from __future__ import annotations

import hashlib
import json
import random

import arvados.keep
import pytest
from pytest_httpserver import HTTPServer

from keepstore import KeepClient, Locator, ReadError, Service, probe_order
from keepstore.errors import ConfigError, NoServicesError
from keepstore.services import ServiceDirectory, parse_services

VECTORS = ["3eab2d5fc9681074", "097dba52e648f1c3", "c5b4e023f8a7d691", "9d81c02e76a3bf54"]


def _arvados_client(proxy: str) -> arvados.keep.KeepClient:
    return arvados.keep.KeepClient(proxy=proxy, api_token="x", local_store="")


@pytest.mark.parametrize("i", range(4))
def test_probe_order_matches_protocol_vectors(i: int) -> None:
    services = [Service(f"zzzzz-bi6l4-{j:015x}", f"http://h{j}:25107/") for j in range(16)]
    md5 = hashlib.md5(b"%064x" % i).hexdigest()
    order = "".join(f"{services.index(s):x}" for s in probe_order(md5, services))
    assert order == VECTORS[i]


def test_probe_order_matches_arvados_service_weight_on_random_sets() -> None:
    rng = random.Random(4)
    arv = _arvados_client("http://127.0.0.1:1/")
    for _ in range(300):
        n = rng.randint(1, 12)
        uuids = {f"{''.join(rng.choices('abcdefghijklmnopqrstuvwxyz0123456789', k=5))}-bi6l4-"
                 f"{''.join(rng.choices('abcdefghijklmnopqrstuvwxyz0123456789', k=15))}" for _ in range(n)}
        services = [Service(u, f"http://{u[-15:]}:25107/") for u in uuids]
        md5 = hashlib.md5(rng.randbytes(8)).hexdigest()
        expected = sorted(uuids, key=lambda u: arv._service_weight(md5, u), reverse=True)
        assert [s.uuid for s in probe_order(md5, services)] == expected


def test_url_lists_rank_like_arvados_weighted_service_roots() -> None:
    rng = random.Random(7)
    for n in (1, 2, 3, 5, 8):
        urls = [f"http://127.0.0.{k + 1}:{25100 + k}/" for k in range(n)]
        arv = _arvados_client(" ".join(urls))
        services = parse_services(" ".join(urls))
        for _ in range(60):
            loc = Locator.for_data(rng.randbytes(16))
            expected = arv.weighted_service_roots(arvados.KeepLocator(str(loc)))
            assert [s.root for s in probe_order(loc, services)] == expected


def test_url_strings_get_arvados_synthetic_uuids_and_proxy_type() -> None:
    services = parse_services(["http://a:1", "http://b:2/"])
    assert [(s.uuid, s.root, s.service_type) for s in services] == [
        ("00000-bi6l4-000000000000000", "http://a:1/", "proxy"),
        ("00000-bi6l4-000000000000001", "http://b:2/", "proxy"),
    ]


def test_space_separated_string_is_split() -> None:
    assert [s.root for s in parse_services("http://a:1 http://b:2")] == ["http://a:1/", "http://b:2/"]


def test_duplicate_roots_are_rejected() -> None:
    with pytest.raises(ConfigError):
        parse_services("http://a:1 http://a:1/")


def test_invalid_root_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Service("zzzzz-bi6l4-000000000000000", "ftp://h/")


def test_cluster_hint_comes_first_as_https_keepproxy() -> None:
    services = [Service(f"zzzzz-bi6l4-{j:015x}", f"http://h{j}:1/") for j in range(3)]
    loc = Locator.parse("acbd18db4cc2f85cedef654fccc4a4d8+3+K@xyzzy")
    order = probe_order(loc, services)
    assert order[0].root == "https://keep.xyzzy.arvadosapi.com/"
    assert order[1:] == probe_order(loc.md5, services)


def test_gateway_services_only_through_uuid_hints() -> None:
    gateway = Service("zzzzz-bi6l4-gateway00000000", "http://gw:1/", service_type="gateway:test")
    disks = [Service(f"zzzzz-bi6l4-{j:015x}", f"http://h{j}:1/") for j in range(3)]
    md5 = "acbd18db4cc2f85cedef654fccc4a4d8"
    assert gateway not in probe_order(md5, [gateway, *disks])
    hinted = probe_order(Locator.parse(f"{md5}+3+K@{gateway.uuid}"), [gateway, *disks])
    assert hinted[0] == gateway and len(hinted) == 4


def test_from_api_brackets_ipv6_and_reads_flags() -> None:
    svc = Service.from_api({"uuid": "zzzzz-bi6l4-000000000000001", "service_host": "::1", "service_port": 25107,
                            "service_ssl_flag": True, "service_type": "disk", "read_only": True})
    assert svc.root == "https://[::1]:25107/" and svc.read_only and svc.is_disk


def _keep_services_json(*items: dict[str, object]) -> dict[str, object]:
    return {"kind": "arvados#keepServiceList", "items": list(items)}


def _item(uuid: str, port: int, **extra: object) -> dict[str, object]:
    return {"uuid": uuid, "service_host": "127.0.0.1", "service_port": port, "service_ssl_flag": False,
            "service_type": "disk", "read_only": False, **extra}


def test_discovery_uses_the_token_and_filters_gateways_and_read_only(httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/arvados/v1/keep_services/accessible", headers={"Authorization": "Bearer tok123"},
    ).respond_with_json(_keep_services_json(
        _item("zzzzz-bi6l4-000000000000001", 1),
        _item("zzzzz-bi6l4-000000000000002", 2, read_only=True),
        _item("zzzzz-bi6l4-000000000000003", 3, service_type="gateway:test"),
    ))
    with KeepClient(api_host=httpserver.url_for("/"), token="tok123") as kc:
        services = kc.services
    assert {s.uuid[-1] for s in services} == {"1", "2", "3"}
    md5 = "acbd18db4cc2f85cedef654fccc4a4d8"
    assert [s.uuid[-1] for s in probe_order(md5, services)] in (["1", "2"], ["2", "1"])


def test_discovery_with_no_services_raises(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/arvados/v1/keep_services/accessible").respond_with_json(_keep_services_json())
    with KeepClient(api_host=httpserver.url_for("/"), token="t") as kc, pytest.raises(NoServicesError):
        assert kc.services


def test_discovery_http_error_raises_no_services(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/arvados/v1/keep_services/accessible").respond_with_data("no", status=401)
    with KeepClient(api_host=httpserver.url_for("/"), token="t") as kc, pytest.raises(NoServicesError, match="401"):
        assert kc.services


def test_directory_refreshes_on_timer_and_after_failures_but_rate_limited() -> None:
    now = [0.0]
    calls = []

    def discover() -> list[Service]:
        calls.append(now[0])
        return [Service("zzzzz-bi6l4-000000000000001", "http://h:1/")]

    d = ServiceDirectory(discover_fn=discover, refresh_interval=100, min_interval=5, clock=lambda: now[0])
    d.services()
    d.services()
    assert len(calls) == 1
    d.mark_stale()
    d.services()
    assert len(calls) == 1  # within min_interval
    now[0] = 6
    d.services()
    assert len(calls) == 2
    d.services()
    assert len(calls) == 2
    now[0] = 200
    d.services()
    assert len(calls) == 3


def test_static_list_is_never_refreshed() -> None:
    d = ServiceDirectory([Service("zzzzz-bi6l4-000000000000001", "http://h:1/")])
    d.mark_stale()
    assert d.services()[0].root == "http://h:1/"


def test_discovery_json_body_parses_like_the_api(httpserver: HTTPServer) -> None:
    body = json.dumps(_keep_services_json(_item("zzzzz-bi6l4-00000000000000a", 9)))
    httpserver.expect_request("/arvados/v1/keep_services/accessible").respond_with_data(
        body, content_type="application/json")
    with KeepClient(api_host=httpserver.url_for("/"), token="t") as kc:
        assert kc.services[0].root == "http://127.0.0.1:9/"


def test_client_rediscovers_after_connection_failures_once_not_every_retry_round(
        httpserver: HTTPServer, tmp_path) -> None:
    import socket

    from keepstore import Retry
    from keepstore.errors import ReadError
    from keepstore.server import KeepServer

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with KeepServer([tmp_path / "v"], fsync=False) as live:
        listed = [_item("zzzzz-bi6l4-000000000000001", dead_port), _item("zzzzz-bi6l4-000000000000002", live.port)]
        calls: list[int] = []

        def accessible(request):  # type: ignore[no-untyped-def]
            from werkzeug import Response

            calls.append(1)
            return Response(json.dumps(_keep_services_json(*listed)), content_type="application/json")

        httpserver.expect_request("/arvados/v1/keep_services/accessible").respond_with_handler(accessible)
        sleeps: list[float] = []
        now = [1000.0]
        with KeepClient(api_host=httpserver.url_for("/"), token="t", retries=Retry(total=3),
                        sleep=sleeps.append, timeout=(1, 5), clock=lambda: now[0]) as kc:
            with pytest.raises(ReadError):
                kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3")  # nowhere: the dead service fails every round
            assert len(sleeps) == 3 and kc.stats().failures[f"http://127.0.0.1:{dead_port}/"] == 4
            assert len(calls) == 1, "connection failures in retry rounds do not rediscover each round"
            listed.pop(0)  # the cluster drops the dead service
            now[0] += 6  # past the 5 s rate limit
            assert [s.root for s in kc.services] == [live.url]
            assert len(calls) == 2, "a connection failure makes the next call rediscover"
            assert kc.put(b"foo", copies=1).md5 == "acbd18db4cc2f85cedef654fccc4a4d8"
            assert kc.services[0].root == live.url
            assert len(calls) == 2, "no failure since: no refresh before the timer"


def test_discovery_keeps_one_service_per_root(httpserver: HTTPServer) -> None:
    """Regression: two API records for one host:port were two services, so one server got two
    PUTs of a block and was counted as two replicas."""
    httpserver.expect_request("/arvados/v1/keep_services/accessible").respond_with_json(_keep_services_json(
        _item("zzzzz-bi6l4-000000000000001", 7), _item("zzzzz-bi6l4-000000000000002", 7),
        _item("zzzzz-bi6l4-000000000000003", 8)))
    with KeepClient(api_host=httpserver.url_for("/"), token="t") as kc:
        assert [s.uuid[-1] for s in kc.services] == ["1", "3"]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_uuid_hints_do_not_reorder_a_static_url_list_as_in_arvados(n: int) -> None:
    urls = [f"http://127.0.0.{k + 1}:{25100 + k}/" for k in range(n)]
    arv = _arvados_client(" ".join(urls))
    services = parse_services(" ".join(urls))
    md5 = "acbd18db4cc2f85cedef654fccc4a4d8"
    for target in services:  # a hint naming each synthetic uuid in turn
        loc = Locator.parse(f"{md5}+3+K@{target.uuid}")
        expected = arv.weighted_service_roots(arvados.KeepLocator(str(loc)))
        assert [s.root for s in probe_order(loc, services)] == expected == [s.root for s in probe_order(md5, services)]


def test_uuid_hints_still_reorder_discovered_services() -> None:
    disks = [Service.from_api({"uuid": f"zzzzz-bi6l4-{j:015d}", "service_host": f"h{j}", "service_port": 1})
             for j in range(3)]
    md5 = "acbd18db4cc2f85cedef654fccc4a4d8"
    last = probe_order(md5, disks)[-1]
    assert probe_order(Locator.parse(f"{md5}+3+K@{last.uuid}"), disks)[0] == last


def test_a_connect_timeout_marks_a_discovered_list_stale(httpserver: HTTPServer) -> None:
    """Issue 16.6: a connect that timed out read as "no response" (libcurl 8 reports
    PRETRANSFER_TIME > 0 there), so the discovered list was never refreshed."""
    import socket

    listener = socket.socket()  # an accept queue kept full: new connects to it time out
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.settimeout(0.3)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("the kernel accepted every connection; cannot make a connect time out")
        calls: list[int] = []

        def accessible(request):  # type: ignore[no-untyped-def]
            from werkzeug import Response

            calls.append(1)
            return Response(json.dumps(_keep_services_json(_item("zzzzz-bi6l4-000000000000001", port))),
                            content_type="application/json")

        httpserver.expect_request("/arvados/v1/keep_services/accessible").respond_with_handler(accessible)
        now = [1000.0]
        with KeepClient(api_host=httpserver.url_for("/"), token="t", retries=0, clock=lambda: now[0],
                        timeout=(0.2, 5)) as kc:
            with pytest.raises(ReadError, match="connect timed out"):
                kc.get("acbd18db4cc2f85cedef654fccc4a4d8+3")
            assert len(calls) == 1
            now[0] += 6  # past the 5 s rate limit of stale refreshes (well before the 300 s timer)
            assert [s.uuid for s in kc.services] == ["zzzzz-bi6l4-000000000000001"]
            assert len(calls) == 2, "the connect timeout marked the list stale"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
