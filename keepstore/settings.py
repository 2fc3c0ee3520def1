"""Settings: what a client or store needs, resolved from arguments, environment, YAML file and defaults."""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import Timeout
from .errors import ConfigError, mask_url_credentials, redact

__all__ = ["Settings", "default_config_path"]


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/keepstore/config.yml`` (``~/.config`` when unset)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "keepstore" / "config.yml"


def _xdg(environ: Mapping[str, str], name: str, fallback: str) -> Path:
    base = environ.get(name) or os.path.join(environ.get("HOME") or os.path.expanduser("~"), fallback)
    return Path(base)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{where}: expected a boolean (true/false/1/0), got {text!r}")


# key -> (type check, description) for the YAML file
_FILE_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "services": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
                 "a list of service URLs or one space-separated string"),
    "token": (lambda v: isinstance(v, str), "a string"),
    "local_store": (lambda v: isinstance(v, str), "a directory path"),
    "cache_dir": (lambda v: isinstance(v, str), "a directory path"),
    "cache_max_bytes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "copies": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
    "retries": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "threads": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
    "timeout": (lambda v: isinstance(v, dict), "a mapping with connect, read, min_bandwidth"),
    "ca_file": (lambda v: isinstance(v, str), "a file path"),
    "insecure": (lambda v: isinstance(v, bool), "true or false"),
    "api_host": (lambda v: isinstance(v, str), "host[:port]"),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything `KeepClient.from_env()` needs, resolved once.

    Precedence: explicit overrides > environment > config file > defaults. ``sources`` says
    where each non-default value came from. The token never appears in ``repr()``.
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
    threads: int = 8
    timeout: Timeout = dataclasses.field(default_factory=Timeout)
    proxy: bool = False
    config_path: str | None = None
    default_local_store: str = ""
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={'***' if f.name == 'token' and self.token else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "sources"
        )
        # The token may also sit, misplaced, in another setting (ca_file: <token>): mask it
        # wherever it is, and anything shaped like an Arvados token too.
        return redact(f"Settings({fields})", self.token)

    @property
    def mode(self) -> str:
        """``services``, ``api`` (discovery) or ``local`` (a LocalStore)."""
        if self.services:
            return "services"
        if self.api_host:
            return "api"
        return "local"

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
        """Resolve settings from *environ* (default ``os.environ``), the YAML file and *overrides*."""
        env = dict(os.environ if environ is None else environ)
        override_token = overrides.get("token")
        secrets = [env.get("KEEP_TOKEN"), env.get("ARVADOS_API_TOKEN"),
                   override_token if isinstance(override_token, str) else None]
        try:
            return cls._resolve(env, config_path, overrides)
        except ConfigError as exc:
            message = str(exc)
            clean = redact(message, *(s.strip() for s in secrets if s and s.strip()))
            if clean == message:
                raise
            # A token was misplaced into another setting; the original error (and so any
            # traceback showing it) quotes the token, so it must not be chained.
            raise ConfigError(clean) from None

    @classmethod
    def _resolve(cls, env: dict[str, str], config_path: str | os.PathLike[str] | None,
                 overrides: dict[str, Any]) -> "Settings":
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}

        if config_path is not None:
            path = Path(config_path)
        elif env.get("KEEP_CONFIG"):
            path = Path(env["KEEP_CONFIG"])
        else:
            path = default_config_path(env)
        explicit_file = config_path is not None or bool(env.get("KEEP_CONFIG"))
        file_values = _load_file(path, required=explicit_file)
        if file_values is not None:
            values["config_path"] = str(path)
        for key, value in (file_values or {}).items():
            if key == "services":
                value = tuple(value.split() if isinstance(value, str) else value)
            elif key == "timeout":
                value = _timeout_from_mapping(value, f"{path}: key 'timeout'")
            values[key] = value
            sources[key] = f"file {path}"

        def from_env_var(key: str, *names: str, convert: Callable[[str, str], Any] = lambda v, n: v) -> None:
            for name in names:
                raw = env.get(name)
                if raw is not None and raw.strip() != "":
                    values[key] = convert(raw, name)
                    sources[key] = f"environment {name}"
                    return

        from_env_var("token", "KEEP_TOKEN", "ARVADOS_API_TOKEN")
        from_env_var("local_store", "KEEP_LOCAL_STORE")
        from_env_var("cache_dir", "KEEP_CACHE_DIR")
        from_env_var("api_host", "ARVADOS_API_HOST")
        from_env_var("insecure", "ARVADOS_API_HOST_INSECURE", convert=lambda v, n: _parse_bool(v, f"environment {n}"))
        from_env_var("services", "KEEP_SERVICES", "ARVADOS_KEEP_SERVICES",
                     convert=lambda v, n: tuple(_check_urls(v.split(), f"environment {n}")))
        if "services" not in sources or sources["services"].startswith("file"):
            proxy = env.get("ARVADOS_KEEP_PROXY", "").strip()
            if proxy:
                values["services"] = tuple(_check_urls([proxy], "environment ARVADOS_KEEP_PROXY"))
                values["proxy"] = True
                sources["services"] = "environment ARVADOS_KEEP_PROXY"

        for key, value in overrides.items():
            if value is None:
                continue
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(f"unknown setting {key!r}")
            if key == "services" and isinstance(value, str):
                value = tuple(value.split())
            if key == "timeout":
                value = Timeout.from_value(value)
            values[key] = value
            sources[key] = "argument"
        # An argument naming where blocks live beats a service list from lower down: from_env(
        # api_host=...) means discovery, from_env(local_store=...) a LocalStore, whatever the
        # environment or the file list (a services= argument, given too, still wins).
        if overrides.get("services") is None and any(overrides.get(k) for k in ("api_host", "local_store")):
            values.pop("services", None)
            values.pop("proxy", None)
            sources.pop("services", None)
            if overrides.get("local_store") and not overrides.get("api_host"):
                values.pop("api_host", None)
                sources.pop("api_host", None)

        if "services" in values:
            values["services"] = tuple(_check_urls(list(values["services"]), sources.get("services", "services")))
        values["default_local_store"] = str(_xdg(env, "XDG_DATA_HOME", ".local/share") / "keepstore" / "blocks")
        values["sources"] = sources
        return cls(**values)

    def default_cache_dir(self, environ: Mapping[str, str] | None = None) -> str:
        """``cache_dir`` or ``$XDG_CACHE_HOME/keepstore/blocks``."""
        env = os.environ if environ is None else environ
        return self.cache_dir or str(_xdg(env, "XDG_CACHE_HOME", ".cache") / "keepstore" / "blocks")


def _check_urls(urls: list[str], where: str) -> list[str]:
    for url in urls:
        if "@" in url:  # Keep authenticates with the token; URL credentials would only leak
            raise ConfigError(f"{where}: service URL {mask_url_credentials(url)} has credentials in it: "
                              f"set the token (KEEP_TOKEN) instead")
        if not (url.startswith("http://") or url.startswith("https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
            raise ConfigError(f"{where}: {url!r} is not an http:// or https:// service URL")
    return urls


def _timeout_from_mapping(value: Mapping[str, Any], where: str) -> Timeout:
    unknown = set(value) - {"connect", "read", "min_bandwidth", "max_connect"}
    if unknown:
        raise ConfigError(f"{where}: unknown timeout field(s) {', '.join(sorted(map(str, unknown)))}")
    try:
        return Timeout(**dict(value))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


_QUOTED = re.compile(r'"[^"]*"' + r"|'[^']*'")


def _load_file(path: Path, *, required: bool) -> dict[str, Any] | None:
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
    yaml = YAML(typ="rt")
    try:
        with warnings.catch_warnings():
            # ruamel warns (ReusedAnchorWarning...) by quoting lines of the file, token and all.
            warnings.simplefilter("ignore")
            data = yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        # Not chained, and quoted values masked: the YAML error's text quotes the file, which
        # may hold the token ('found duplicate key "token" with value "..."').
        problem = _QUOTED.sub('"..."', str(problem))
        raise ConfigError(f"config file {path}{line}: invalid YAML: {problem}") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting past the stack
        problem = "a number too long to read" if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigError(f"config file {path}: invalid YAML: {problem}") from None
    except (KeyError, AttributeError, TypeError):  # ruamel's constructors on odd tags (!!bool x, !!set x)
        # Their messages are the raw value (KeyError: 'the token'): say nothing of it.
        raise ConfigError(f"config file {path}: invalid YAML: a tagged value could not be read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} line 1: the top level must be a mapping of settings")
    token = data.get("token")
    try:
        return _check_file_values(data, path)
    except ConfigError as exc:
        if isinstance(token, str) and token.strip() and token in str(exc):
            # The token was misplaced into another setting: never quote it, nor chain the error that does.
            raise ConfigError(redact(str(exc), token)) from None
        raise


def _check_file_values(data: Any, path: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in data.items():
        try:
            line_no = data.lc.key(key)[0] + 1
        except (AttributeError, KeyError, TypeError):
            line_no = 0
        where = f"config file {path} line {line_no}, key {key!r}"
        if key not in _FILE_KEYS:
            raise ConfigError(f"{where}: unknown setting (known: {', '.join(sorted(_FILE_KEYS))})")
        check, wanted = _FILE_KEYS[key]
        if not check(value):
            shown = "a " + type(value).__name__ if key == "token" else repr(value)
            raise ConfigError(f"{where}: expected {wanted}, got {shown}")
        if key == "timeout":
            value = _timeout_from_mapping(dict(value), where)
            result[key] = dict(connect=value.connect, read=value.read,
                               min_bandwidth=value.min_bandwidth, max_connect=value.max_connect)
        elif key == "services":
            result[key] = value if isinstance(value, str) else [str(v) for v in value]
            _check_urls(result[key].split() if isinstance(result[key], str) else result[key], where)
        else:
            result[key] = value
    return result
