"""Settings: what a client or store needs, resolved from arguments, environment, YAML file and defaults."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Timeout
from .errors import ConfigError, mask_url_credentials, redact

__all__ = ["MIN_TOKEN_LENGTH", "Mode", "Origin", "Settings", "Source", "default_config_path", "load_config_file",
           "service_urls"]

MIN_TOKEN_LENGTH = 8  # Arvados tokens are 32+ characters; anything this short is a mistake, not a secret


class Source(enum.Enum):
    """Where a setting's value came from, lowest precedence first."""

    FILE = "file"
    ENVIRONMENT = "environment"
    ARGUMENT = "argument"


@dataclasses.dataclass(frozen=True)
class Origin:
    """A setting's origin: its `Source` and the file path or variable name (empty for arguments).

    ``str(origin)`` reads as ``file /etc/k.yml``, ``environment KEEP_TOKEN`` or ``argument``.

    Args:
        source: The layer the value came from.
        name: The config file's path or the environment variable's name; empty for an argument.
    """

    source: Source
    name: str = ""

    def __str__(self) -> str:
        return f"{self.source.value} {self.name}" if self.name else self.source.value


class Mode(str, enum.Enum):
    """What `Settings` makes `KeepClient.from_env()` build (a str enum: ``Mode.LOCAL == "local"``)."""

    SERVICES = "services"  # a KeepClient for the listed service roots
    API = "api"  # a KeepClient that discovers its services from the API host
    LOCAL = "local"  # a LocalStore at Settings.store_path

    def __str__(self) -> str:
        return self.value


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/keepstore/config.yml`` (``~/.config`` when unset)."""
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "keepstore" / "config.yml"


def load_config_file(environ: Mapping[str, str] | None = None,
                     config_path: str | os.PathLike[str] | None = None) -> tuple[Path, Any]:
    """The config file `Settings.from_env` reads (*config_path*, ``KEEP_CONFIG``, else the default,
    which may be absent) and its top-level mapping: ruamel's, with ``lc`` line numbers; None if absent.

    For the modules that read the file's sections other than settings (``profiles:``).
    """
    path, required = _config_file(os.environ if environ is None else environ, config_path)
    return path, _load_file(path, required=required, secrets=[])


def _config_file(env: Mapping[str, str], config_path: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    explicit = config_path is not None or bool(env.get("KEEP_CONFIG"))
    path = config_path if config_path is not None else env.get("KEEP_CONFIG") or default_config_path(env)
    return Path(path), explicit


def _xdg(environ: Mapping[str, str], name: str, fallback: str) -> Path:
    base = environ.get(name) or os.path.join(environ.get("HOME") or os.path.expanduser("~"), fallback)
    return Path(base)


def service_urls(value: Any, where: str) -> tuple[str, ...]:
    """The one normalisation point for service URLs: a list, or one space-separated string.

    Every URL must be ``http://`` or ``https://`` with a host, a port (when given) in 1-65535,
    and no ``user:password@`` (the token authenticates). Raises `ConfigError` naming *where*.
    """
    if isinstance(value, str):
        urls = value.split()
    elif isinstance(value, (list, tuple)) and all(isinstance(url, str) for url in value):
        urls = [url.strip() for url in value]
    else:
        raise ConfigError(f"{where}: expected a list of service URLs or one space-separated string, "
                          f"got {plain_kind(value)}")
    for url in urls:
        if "@" in url:  # Keep authenticates with the token; URL credentials would only leak
            raise ConfigError(f"{where}: service URL {mask_url_credentials(url)} has credentials in it: "
                              f"set the token (KEEP_TOKEN) instead")
        if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1].strip("/"):
            raise ConfigError(f"{where}: {url!r} is not an http:// or https:// service URL")
        try:
            parts = urlsplit(url)
        except ValueError:  # an unbalanced [IPv6] host
            raise ConfigError(f"{where}: service URL {url!r} has an unbalanced [IPv6 host]") from None
        try:
            port = parts.port
        except ValueError:  # out of range or not a number
            raise ConfigError(f"{where}: service URL {url!r} has a port that is not a number in 1-65535") from None
        if not parts.hostname:
            raise ConfigError(f"{where}: service URL {url!r} has no host name")
        if port == 0:
            raise ConfigError(f"{where}: service URL {url!r} has port 0, which no server listens on")
    return tuple(urls)


def plain_kind(value: Any, *, show: bool = True) -> str:
    """*value*'s kind in plain words ("a list", "a mapping", "the number 5"), never a library type name.

    With *show* false a scalar's value is left out (for the token's setting).
    """
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)" if show else "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}" if show else "a number"
    if isinstance(value, str):
        return f"the text {value!r}" if show else "text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (set, frozenset)):
        return "a set"
    return "a value of another kind"


def _token(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected the token as text, got {plain_kind(value, show=False)}")
    if len(value.strip()) < MIN_TOKEN_LENGTH:
        length = len(value.strip())
        raise ConfigError(f"{where}: the token is too short to be real ({length} character{'s' * (length != 1)}; "
                          f"Arvados tokens have 32 or more)")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _boolean(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{where}: expected a boolean (true/false/1/0), got {text!r}")


def _timeout(value: Any, where: str) -> Timeout:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping with connect, read, min_bandwidth, got {plain_kind(value)}")
    unknown = set(value) - {"connect", "read", "min_bandwidth", "max_connect"}
    if unknown:
        raise ConfigError(f"{where}: unknown timeout field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        return Timeout(**{str(k): v for k, v in value.items()})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _seconds(value: Any, where: str) -> float:
    """A positive, finite number of seconds (text from the environment, a number elsewhere)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number of seconds, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < number < float("inf"):
        raise ConfigError(f"{where}: expected a positive number of seconds, got {plain_kind(value)}")
    return float(number)


def _typed(check: Callable[[Any], bool], wanted: str) -> Callable[[Any, str], Any]:
    def convert(value: Any, where: str) -> Any:
        if not check(value):
            raise ConfigError(f"{where}: expected {wanted}, got {plain_kind(value)}")
        return value
    return convert


def _is_int(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


_text = _typed(lambda v: isinstance(v, str), "text")
_flag = _typed(lambda v: isinstance(v, bool), "true or false")
_path = _typed(lambda v: isinstance(v, str), "a path")


@dataclasses.dataclass(frozen=True)
class _Key:
    """One setting in the resolution table: its environment names and how each layer's value is read."""

    env: tuple[str, ...] = ()  # environment variables, highest precedence first
    from_env: Callable[[str, str], Any] | None = None  # (text, where) -> value; None: the text as is
    from_file: Callable[[Any, str], Any] | None = None  # (YAML value, where) -> value; None: not in the file
    from_argument: Callable[[Any, str], Any] | None = None  # (argument, where) -> value; None: as given


_KEYS: dict[str, _Key] = {
    "services": _Key(("KEEP_SERVICES", "ARVADOS_KEEP_SERVICES"), service_urls, service_urls, service_urls),
    "token": _Key(("KEEP_TOKEN", "ARVADOS_API_TOKEN"), _token, _token, _token),
    "api_host": _Key(("ARVADOS_API_HOST",), None, _typed(lambda v: isinstance(v, str), "host[:port]")),
    "insecure": _Key(("ARVADOS_API_HOST_INSECURE",), _boolean, _flag),
    "ca_file": _Key((), None, _path),
    "local_store": _Key(("KEEP_LOCAL_STORE",), None, _path),
    "cache_dir": _Key(("KEEP_CACHE_DIR",), None, _path),
    "cache_max_bytes": _Key((), None, _typed(_is_int(0), "a non-negative integer")),
    "copies": _Key((), None, _typed(_is_int(1), "a positive integer")),
    "retries": _Key((), None, _typed(_is_int(0), "a non-negative integer")),
    "deadline": _Key(("KEEP_DEADLINE",), _seconds, _seconds, _seconds),
    "threads": _Key((), None, _typed(_is_int(1), "a positive integer")),
    "hedging": _Key(("KEEP_HEDGING",), _boolean, _flag, _flag),
    "timeout": _Key((), None, _timeout, lambda v, where: Timeout.from_value(v)),
    "proxy": _Key(),
    "config_path": _Key(),
    "default_local_store": _Key(),
}
_SECTIONS = ("profiles",)  # top-level keys of the file that are not settings; keepstore.profiles reads them
_FILE_KEYS = sorted([name for name, key in _KEYS.items() if key.from_file is not None] + list(_SECTIONS))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `KeepClient.from_env()` needs, resolved once (usually by `from_env`).

    Precedence: explicit arguments > environment > config file > defaults. The token never
    appears in ``repr()`` nor in any `ConfigError`.

    Args:
        services: Keep service roots (``http://`` / ``https://``), in configured order.
        token: The token sent to the services.
        api_host: An Arvados API host to discover services from when *services* is empty.
        insecure: Skip TLS verification for the API host.
        ca_file: A CA bundle for TLS verification.
        local_store: The directory of a `LocalStore`, used when no services are configured.
        cache_dir: The disk block cache's directory (see `default_cache_dir`).
        cache_max_bytes: The disk block cache's size limit.
        copies: Replicas wanted per block.
        retries: Retry rounds after the first.
        deadline: Seconds a block operation may spend retrying in all (`Retry.deadline`);
            None for no limit (``keep`` uses 15 s then).
        threads: Parallel transfers.
        hedging: Hedge GETs (ask the next replica when the best is slow to answer; a client
            made here gets ``HedgePolicy(enabled=hedging)``, or the ``hedge=`` it is given).
        timeout: Connection timeouts.
        proxy: True when *services* is one Keep proxy (``ARVADOS_KEEP_PROXY``).
        config_path: The config file read, if any.
        default_local_store: The `LocalStore` directory used when *local_store* is unset.
        sources: Where each non-default value came from (an `Origin` per setting name).
    """

    services: tuple[str, ...] = ()
    token: str | None = dataclasses.field(default=None, repr=False)
    api_host: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    local_store: str | None = None
    cache_dir: str | None = None
    cache_max_bytes: int = 1 << 30
    copies: int = 2
    retries: int = 10
    deadline: float | None = None
    threads: int = 8
    hedging: bool = True
    timeout: Timeout = dataclasses.field(default_factory=Timeout)
    proxy: bool = False
    config_path: str | None = None
    default_local_store: str = ""
    sources: Mapping[str, Origin] = dataclasses.field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={'***' if f.name == 'token' and self.token else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "sources"
        )
        # The token may also sit, misplaced, in another setting (ca_file: <token>).
        return _conceal(f"Settings({fields})", [self.token])

    @property
    def mode(self) -> Mode:
        """`Mode.SERVICES`, `Mode.API` (discovery) or `Mode.LOCAL` (a LocalStore)."""
        if self.services:
            return Mode.SERVICES
        if self.api_host:
            return Mode.API
        return Mode.LOCAL

    @property
    def store_path(self) -> str:
        """The LocalStore directory used in ``local`` mode."""
        return self.local_store or self.default_local_store

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> "Settings":
        """Resolve settings from *environ* (default ``os.environ``), the YAML file and *overrides*.

        Raises:
            ConfigError: an invalid value, naming where it came from (file and line, variable
                or argument) and never quoting the token.
        """
        env = dict(os.environ if environ is None else environ)
        secrets = [env.get("KEEP_TOKEN"), env.get("ARVADOS_API_TOKEN"), overrides.get("token")]
        try:
            return cls._resolve(env, config_path, overrides, secrets)
        except ConfigError as exc:
            message = str(exc)
            clean = _conceal(message, secrets)
            if clean == message:
                raise
            # A token was misplaced into another setting; the original error (and so any
            # traceback showing it) quotes the token, so it must not be chained.
            raise ConfigError(clean) from None

    @classmethod
    def _resolve(cls, env: dict[str, str], config_path: str | os.PathLike[str] | None,
                 overrides: dict[str, Any], secrets: list[Any]) -> "Settings":
        path, explicit_file = _config_file(env, config_path)
        layers: list[tuple[Origin, dict[str, Any]]] = []
        data = _load_file(path, required=explicit_file, secrets=secrets)
        if data is not None:
            layers.append((Origin(Source.FILE, str(path)), _file_layer(data, path)))
        layers.extend(_env_layers(env))
        unknown = sorted(set(overrides) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}")
        arguments = {name: (_KEYS[name].from_argument or (lambda v, w: v))(value, f"argument {name}")
                     for name, value in overrides.items() if value is not None}
        layers.append((Origin(Source.ARGUMENT), arguments))

        values: dict[str, Any] = {}
        sources: dict[str, Origin] = {}
        for origin, layer in layers:
            for name, value in layer.items():
                values[name], sources[name] = value, origin
            if "services" in layer:
                values["proxy"] = layer.get("proxy", False)
        # An argument naming where blocks live beats a service list from lower down: from_env(
        # api_host=...) means discovery, from_env(local_store=...) a LocalStore, whatever the
        # environment or the file list (a services= argument, given too, still wins).
        if "services" not in arguments and (arguments.get("api_host") or arguments.get("local_store")):
            for name in ("services", "proxy") + (("api_host",) if not arguments.get("api_host") else ()):
                values.pop(name, None)
                sources.pop(name, None)
        sources.pop("proxy", None)
        if data is not None:
            values["config_path"] = str(path)
        values["default_local_store"] = str(_xdg(env, "XDG_DATA_HOME", ".local/share") / "keepstore" / "blocks")
        return cls(**values, sources=sources)

    def default_cache_dir(self, environ: Mapping[str, str] | None = None) -> str:
        """``cache_dir`` or ``$XDG_CACHE_HOME/keepstore/blocks``."""
        env = os.environ if environ is None else environ
        return self.cache_dir or str(_xdg(env, "XDG_CACHE_HOME", ".cache") / "keepstore" / "blocks")


def _conceal(text: str, secrets: list[Any]) -> str:
    """The one redaction point for the token: every known token (where it stands as a value) becomes ``***``."""
    return redact(text, *(s.strip() for s in secrets if isinstance(s, str) and s.strip()))


def _env_layers(env: Mapping[str, str]) -> list[tuple[Origin, dict[str, Any]]]:
    """One layer per environment variable set (empty values count as unset)."""
    layers: list[tuple[Origin, dict[str, Any]]] = []
    for name, key in _KEYS.items():
        for variable in key.env:
            raw = env.get(variable)
            if raw is not None and raw.strip():
                value = key.from_env(raw, f"environment {variable}") if key.from_env else raw
                layers.append((Origin(Source.ENVIRONMENT, variable), {name: value}))
                break
        else:
            if name == "services" and (env.get("ARVADOS_KEEP_PROXY") or "").strip():
                urls = service_urls(env["ARVADOS_KEEP_PROXY"].strip(), "environment ARVADOS_KEEP_PROXY")
                if len(urls) != 1:
                    raise ConfigError("environment ARVADOS_KEEP_PROXY: expected one proxy URL")
                layers.append((Origin(Source.ENVIRONMENT, "ARVADOS_KEEP_PROXY"), {name: urls, "proxy": True}))
    return layers


def _file_layer(data: Any, path: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in data.items():
        try:
            line_no = data.lc.key(key)[0] + 1
        except (AttributeError, KeyError, TypeError):  # not ruamel's round-trip mapping, or an odd key
            line_no = 0
        where = f"config file {path} line {line_no}, key {key!r}"
        if key in _SECTIONS:
            continue
        convert = _KEYS[key].from_file if isinstance(key, str) and key in _KEYS else None
        if convert is None:
            raise ConfigError(f"{where}: unknown setting (known: {', '.join(_FILE_KEYS)})")
        result[key] = convert(value, where)
    return result


_QUOTED = re.compile(r'"[^"]*"' + r"|'[^']*'")


def _load_file(path: Path, *, required: bool, secrets: list[Any]) -> Any:
    """The YAML file's top-level mapping (ruamel round-trip, for line numbers), or None when absent.

    The file's token (if any) is added to *secrets*, so errors never quote it.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    try:
        with warnings.catch_warnings():
            # ruamel warns (ReusedAnchorWarning...) by quoting lines of the file, token and all.
            warnings.simplefilter("ignore")
            data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        # Not chained, and quoted values masked: the YAML error's text quotes the file, which
        # may hold the token ('found duplicate key "token" with value "..."').
        problem = _QUOTED.sub('"..."', str(problem))
        raise ConfigError(f"config file {path}{line}: invalid YAML: {problem}") from None
    except RecursionError:  # nesting past the stack
        raise ConfigError(f"config file {path}: invalid YAML: nested too deeply") from None
    except Exception as exc:  # ruamel's scalar constructors raise IndexError ("-_"),
        # ValueError (4300+ digit integers), KeyError/TypeError (!!bool x, !!set x)...: any of them is a
        # value the file cannot hold. Their messages quote the raw value (maybe the token): not shown.
        raise ConfigError(f"config file {path}{_find_unreadable(text)}: invalid YAML: "
                          f"{_unreadable_reason(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} line 1: the top level must be a mapping of settings")
    secrets.append(data.get("token"))
    return data


def _unreadable_reason(exc: Exception) -> str:
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return "a number too long to read"
    return "a value that cannot be read (for a number or text with odd signs, put it in quotes)"


def _find_unreadable(text: str) -> str:
    """`` line N, key 'k'`` for the first top-level value ruamel cannot construct (or "" if none is found)."""
    from ruamel.yaml import YAML

    try:
        root = YAML(typ="rt").compose(text)
    except Exception:  # only a hint for the message; the caller reports the failure anyway
        return ""
    for key_node, value_node in getattr(root, "value", None) or ():
        try:
            YAML(typ="rt").constructor.construct_object(value_node, deep=True)
        except Exception:  # this is the unreadable value we are looking for
            key = key_node.value if isinstance(getattr(key_node, "value", None), str) else "?"
            return f" line {value_node.start_mark.line + 1}, key {key!r}"
    return ""
