"""Named stores: the config file's ``profiles:`` mapping (``keep copy --to NAME``)."""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, redact
from .settings import MIN_TOKEN_LENGTH, load_config_file, plain_kind, service_urls
from .store import BlockStore

__all__ = ["PROFILE_KEYS", "Profile", "load_profiles", "profile"]

#: The settings a profile may hold.
PROFILE_KEYS = ("copies", "local_store", "services", "token", "token_file")


@dataclasses.dataclass(frozen=True)
class Profile:
    """One named store: Keep services (with their token and copies) or a local store directory.

    The token never appears in ``repr()`` nor in any `ConfigError`.

    Args:
        name: The profile's name in the config file.
        where: ``config file PATH line N, profile 'NAME'``, for error messages.
        services: The Keep service roots (empty for a local store).
        token: The token for *services*; None: *token_file*'s, else the configured one.
        token_file: A file holding the token (read by `open`); relative paths in the config file
            are taken beside it.
        copies: Replicas wanted at *services*; None: the configured copies.
        local_store: A `LocalStore` directory (``~`` expanded; relative paths in the config file
            are taken beside it), instead of services.
        config_path: The config file the profile is in (`open` reads the other settings there).
    """

    name: str
    where: str
    services: tuple[str, ...] = ()
    token: str | None = dataclasses.field(default=None, repr=False)
    token_file: str | None = None
    copies: int | None = None
    local_store: str | None = None
    config_path: str | None = None

    def open(self, *, copies: int | None = None, token: str | None = None,
             environ: Mapping[str, str] | None = None) -> BlockStore:
        """The store this profile names: a `LocalStore`, or a `KeepClient` for its services.

        A services profile takes the other settings (timeouts, retries, CA file, and the token
        when it names none) from the environment and the config file, as `KeepClient.from_env`
        does. *copies* and *token* (given on the command line) beat the profile's.
        """
        if self.local_store is not None:
            from .local import LocalStore

            if token is not None:
                raise ConfigError(f"{self.where}: a local_store profile takes no token (a token file was given)")

            return LocalStore(os.path.expanduser(self.local_store))
        from .client import KeepClient

        overrides: dict[str, Any] = {"services": self.services}
        secret = token or self.token or (self._read_token_file() if self.token_file else None)
        if secret is not None:
            overrides["token"] = secret
        if (copies or self.copies) is not None:
            overrides["copies"] = copies or self.copies
        return KeepClient.from_env(environ, config_path=self.config_path, **overrides)

    def _read_token_file(self) -> str:
        where = f"{self.where}, key 'token_file'"
        path = Path(os.path.expanduser(str(self.token_file)))
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:  # missing, unreadable, or not text: the file's name is enough
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{where}: cannot read the token file {path}: {reason}") from None
        _check_token(text, f"{where}: the token file {path}")
        return text


def load_profiles(environ: Mapping[str, str] | None = None,
                  config_path: str | os.PathLike[str] | None = None) -> Mapping[str, Profile]:
    """Every profile in the config file (none when it is absent or has no ``profiles:``), by name.

    Raises:
        ConfigError: a profile that is not valid, naming the file, the line and the key (and
            never quoting a token).
    """
    return _load(environ, config_path)[2]


def profile(name: str, environ: Mapping[str, str] | None = None,
            config_path: str | os.PathLike[str] | None = None) -> Profile:
    """The profile *name* from the config file.

    Raises:
        ConfigError: no such profile (listing the known ones), or an invalid profiles section.
    """
    path, exists, found = _load(environ, config_path)
    if name in found:
        return found[name]
    if not exists:
        raise ConfigError(f"no profile {name!r}: config file {path} does not exist (profiles are set in its "
                          "profiles: mapping)")
    known = f"known: {', '.join(sorted(found))}" if found else "it has no profiles: mapping"
    raise ConfigError(f"no profile {name!r} in config file {path} ({known})")


def _load(environ: Mapping[str, str] | None,
          config_path: str | os.PathLike[str] | None) -> tuple[Path, bool, Mapping[str, Profile]]:
    """The config file, whether it exists, and its profiles."""
    path, data = load_config_file(environ, config_path)
    section = None if data is None else data.get("profiles")
    if section is None:
        return path, data is not None, types.MappingProxyType({})
    env = os.environ if environ is None else environ
    tokens = [data.get("token"), env.get("KEEP_TOKEN"), env.get("ARVADOS_API_TOKEN")]
    if isinstance(section, Mapping):
        tokens += [body.get("token") for body in section.values() if isinstance(body, Mapping)]
    try:
        return path, True, types.MappingProxyType(_profiles(section, path, data))
    except ConfigError as exc:
        clean = redact(str(exc), *(t.strip() for t in tokens if isinstance(t, str)))
        if clean == str(exc):
            raise
        raise ConfigError(clean) from None  # the original quotes a misplaced token: not chained


def _line(mapping: Any, key: Any) -> int:
    try:
        return int(mapping.lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):  # not ruamel's round-trip mapping, or an odd key
        return 0


def _profiles(section: Any, path: Path, data: Any) -> dict[str, Profile]:
    if not isinstance(section, Mapping):
        raise ConfigError(f"config file {path} line {_line(data, 'profiles')}, key 'profiles': expected a mapping "
                          f"of profile names to settings, got {plain_kind(section)}")
    result = {}
    for name, body in section.items():
        where = f"config file {path} line {_line(section, name)}, profile {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: a profile name must be text")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(PROFILE_KEYS)}, "
                              f"got {plain_kind(body, show=False)}")
        result[name] = _profile(name, body, path, where)
    return result


def _profile(name: str, body: Mapping[Any, Any], path: Path, where: str) -> Profile:
    values: dict[str, Any] = {}
    for key, value in body.items():
        at = f"config file {path} line {_line(body, key)}, profile {name!r}, key {key!r}"
        if key not in PROFILE_KEYS:
            raise ConfigError(f"{at}: unknown profile setting (known: {', '.join(PROFILE_KEYS)})")
        if key == "services":
            values[key] = service_urls(value, at)
        elif key == "token":
            values[key] = _check_token(value, at)
        elif key == "copies":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{at}: expected a positive integer, got {plain_kind(value)}")
            values[key] = value
        elif not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{at}: expected a path, got {plain_kind(value)}")
        else:
            values[key] = _beside(path, value)
    if ("services" in values) == ("local_store" in values):
        raise ConfigError(f"{where}: set one of services (Keep services) or local_store (a directory)")
    if "token" in values and "token_file" in values:
        raise ConfigError(f"{where}: set token or token_file, not both")
    if "local_store" in values and {"token", "token_file", "copies"} & set(values):
        extra = ", ".join(sorted({"token", "token_file", "copies"} & set(values)))
        raise ConfigError(f"{where}: a local_store profile is one copy with no token; remove {extra}")
    if not values.get("services", True):
        raise ConfigError(f"{where}, key 'services': the list is empty")
    return Profile(name=name, where=where, config_path=str(path), **values)


def _beside(config: Path, value: str) -> str:
    """*value* (``~`` expanded) as a path; a relative one is taken beside the config file, as
    the file's author meant it, not against whatever directory a command runs in."""
    expanded = os.path.expanduser(value.strip())
    return expanded if os.path.isabs(expanded) else str(config.parent / expanded)


def _check_token(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected the token as text, got {plain_kind(value, show=False)}")
    if len(value.strip()) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{where}: the token is too short to be real ({len(value.strip())} characters; "
                          "Arvados tokens have 32 or more)")
    return value.strip()
