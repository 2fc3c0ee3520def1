"""Keep services: the `Service` value, Arvados-identical `probe_order()`, and discovery."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

from .errors import ConfigError, NoServicesError, mask_url_credentials
from .locator import Locator

__all__ = ["Service", "ServiceDirectory", "ServiceLike", "discover", "parse_services", "probe_order"]

log = logging.getLogger(__name__)

SYNTHETIC_UUID = "00000-bi6l4-%015d"  # what Arvados gives ARVADOS_KEEP_SERVICES entries


@dataclasses.dataclass(frozen=True)
class Service:
    """One Keep service.

    Args:
        uuid: The service's Arvados uuid (its last 15 characters rank it, `weight`).
        root: ``http(s)://host:port/``; a ``/`` is added when missing. No credentials in it.
        service_type: ``disk``, ``proxy``, ``gateway:*`` or another Arvados type.
        read_only: Never written to.

    Raises:
        ConfigError: a root that is not http(s), has credentials, or an empty uuid.
    """

    uuid: str
    root: str
    service_type: str = "disk"
    read_only: bool = False

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.root)
        if "@" in self.root:
            # Keep authenticates with the token (Authorization: Bearer), which replaces what
            # libcurl would make of URL credentials; refusing them also keeps a password out of
            # every repr, log line and error that names a service root. Any "@" counts: a
            # password with an unescaped "?", "/" or "#" ends urlsplit's netloc before it.
            raise ConfigError(f"Keep service root {mask_url_credentials(self.root)} has credentials in it: "
                              f"pass the token as token= (or KEEP_TOKEN) instead")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"invalid Keep service root {self.root!r}: need http:// or https:// and a host")
        if not self.root.endswith("/"):
            object.__setattr__(self, "root", self.root + "/")
        if not isinstance(self.uuid, str) or not self.uuid:
            raise ConfigError(f"Keep service {self.root} needs a uuid")

    @classmethod
    def from_url(cls, url: str, index: int) -> "Service":
        """A service named by URL alone, as Arvados' ``ARVADOS_KEEP_SERVICES`` builds it."""
        return cls(uuid=SYNTHETIC_UUID % index, root=url, service_type="proxy")

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> "Service":
        """A service from one ``keep_services/accessible`` item (IPv6 hosts get brackets)."""
        try:
            host = str(item["service_host"])
            port = int(item["service_port"])
            scheme = "https" if item.get("service_ssl_flag") else "http"
            uuid = str(item["uuid"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed keep service record from the API: missing or bad {exc}") from exc
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(uuid=uuid, root=f"{scheme}://{host}:{port}/",
                   service_type=str(item.get("service_type") or "disk"),
                   read_only=bool(item.get("read_only", False)))

    @property
    def is_gateway(self) -> bool:
        return self.service_type.startswith("gateway:")

    @property
    def is_disk(self) -> bool:
        return self.service_type == "disk"

    @property
    def from_url_list(self) -> bool:
        """Named by URL alone (`from_url`): typed ``proxy`` for want of knowing better."""
        return self.service_type == "proxy" and self.uuid.startswith(SYNTHETIC_UUID.split("%", 1)[0])

    def weight(self, md5: str) -> str:
        """Rendezvous weight for block *md5*: md5 hex of md5 + the uuid's last 15 characters."""
        return hashlib.md5((md5 + self.uuid[-15:]).encode(), usedforsecurity=False).hexdigest()

    def __str__(self) -> str:
        return self.root


ServiceLike = Union[Service, str]


def parse_services(services: ServiceLike | Iterable[ServiceLike]) -> list[Service]:
    """`Service` objects from Services, URL strings, or one space-separated string of URLs.

    URL strings get ``00000-bi6l4-%015d`` uuids by their position in the whole list and type
    ``proxy``, exactly as Arvados treats ``ARVADOS_KEEP_SERVICES``, so both clients rank alike.
    """
    items: list[ServiceLike]
    if isinstance(services, (str, Service)):
        items = list(services.split()) if isinstance(services, str) else [services]
    else:
        items = []
        for entry in services:
            items.extend(entry.split() if isinstance(entry, str) else [entry])
    result: list[Service] = []
    for index, entry in enumerate(items):
        if isinstance(entry, Service):
            result.append(entry)
        elif isinstance(entry, str):
            result.append(Service.from_url(entry, index))
        else:
            raise ConfigError(f"services entries must be Service objects or URLs, not {type(entry).__name__}")
    roots = [s.root for s in result]
    if len(set(roots)) != len(roots):
        raise ConfigError(f"duplicate Keep service roots in {roots}")
    return result


def probe_order(loc_or_md5: Locator | str, services: Sequence[Service]) -> list[Service]:
    """Services in the order to try for a block, identical to the Arvados SDK.

    Services named by ``+K@`` hints come first, in hint order: a 5-character cluster id means
    ``https://keep.<cluster>.arvadosapi.com/``, a 27-character uuid the service with that uuid
    when it is known from discovery (or given as a `Service`). Services named by URL alone (a
    static list: ``KEEP_SERVICES``, ``ARVADOS_KEEP_SERVICES``, URL strings) are never picked
    by a uuid hint, as the Arvados SDK, whose static lists have no gateway services, does not.
    Then the non-gateway services by descending weight.
    """
    if isinstance(loc_or_md5, Locator):
        loc: Locator | None = loc_or_md5
        md5 = loc_or_md5.md5
    elif "+" in loc_or_md5:
        loc = Locator.parse(loc_or_md5)
        md5 = loc.md5
    else:
        loc, md5 = None, loc_or_md5
    ordered: list[Service] = []
    targets = loc.service_hints if loc is not None and loc.hints else ()
    if targets:
        by_uuid = {s.uuid: s for s in services if not s.from_url_list}
        for target in targets:
            if len(target) == 5:
                ordered.append(Service(uuid=f"{target}-bi6l4-000000000000000",
                                       root=f"https://keep.{target}.arvadosapi.com/", service_type="proxy"))
            elif target in by_uuid:
                ordered.append(by_uuid[target])
    ranked = sorted((s for s in services if not s.is_gateway), key=lambda s: s.weight(md5), reverse=True)
    if not ordered:
        return ranked
    seen = {s.root for s in ordered}
    ordered.extend(s for s in ranked if s.root not in seen)
    return ordered


def discover(api_host: str, fetch: Callable[[str], tuple[int, bytes]]) -> list[Service]:
    """Services from ``GET /arvados/v1/keep_services/accessible`` on *api_host*.

    *fetch(url)* returns ``(status, body)`` (the caller adds the token). *api_host* is
    ``host[:port]`` (HTTPS) or a full ``http(s)://`` URL.
    """
    base = api_host if "://" in api_host else f"https://{api_host}"
    url = base.rstrip("/") + "/arvados/v1/keep_services/accessible"
    status, body = fetch(url)
    if status != 200:
        raise NoServicesError(f"Keep service discovery at {base} failed: HTTP {status}")
    try:
        items = json.loads(body)["items"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NoServicesError(f"Keep service discovery at {base} returned an unexpected body") from exc
    services: list[Service] = []
    for item in items:
        service = Service.from_api(item)
        if all(s.root != service.root for s in services):  # two records for one host:port
            services.append(service)  # would count a replica twice and PUT one server twice
    if not services:
        raise NoServicesError(f"the Arvados API at {base} lists no accessible Keep services")
    return services


class ServiceDirectory:
    """The current service list: static, or discovered and refreshed.

    A discovered list is refreshed after *refresh_interval* seconds, or on the next call
    after `mark_stale()` (a connection failure), but not more than once per *min_interval*.

    Args:
        static: A fixed list of services (never refreshed).
        discover_fn: Returns the current services (raising `NoServicesError` on failure);
            used when *static* is None.
        refresh_interval: Seconds after which a discovered list is fetched again.
        min_interval: Fewest seconds between refreshes a connection failure may cause.
        clock: Monotonic seconds (tests pass their own).

    Raises:
        NoServicesError: neither *static* nor *discover_fn* given.
    """

    def __init__(self, static: Sequence[Service] | None = None, *,
                 discover_fn: Callable[[], list[Service]] | None = None,
                 refresh_interval: float = 300.0, min_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if static is None and discover_fn is None:
            raise NoServicesError("no Keep services configured and no API host to discover them")
        self._static = list(static) if static is not None else None
        self._discover = discover_fn
        self._services: list[Service] = list(static or [])
        self._fetched_at: float | None = None
        self._stale = False
        self.refresh_interval = refresh_interval
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self.refreshes = 0

    @property
    def is_static(self) -> bool:
        return self._static is not None

    def services(self) -> list[Service]:
        """The current list, discovering or refreshing first when due."""
        if self._static is not None:
            return self._static
        with self._lock:
            now = self._clock()
            due = (self._fetched_at is None
                   or now - self._fetched_at >= self.refresh_interval
                   or (self._stale and now - self._fetched_at >= self.min_interval))
            if due:
                assert self._discover is not None
                try:
                    self._services = self._discover()
                    self.refreshes += 1
                except NoServicesError:
                    if not self._services:
                        raise
                    log.warning("Keep service refresh failed; keeping the previous list", exc_info=True)
                self._fetched_at = now
                self._stale = False
            return self._services

    def mark_stale(self) -> None:
        """Note a connection failure: refresh on the next call (rate-limited)."""
        if self._static is None:
            self._stale = True
