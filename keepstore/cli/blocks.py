"""The block-level commands of ``keep``: ``head`` and ``config`` (the settings in effect)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import BlockNotFound
from ..locator import Locator
from ..open import open_store

__all__ = ["config_report", "register"]

EXIT_OK, EXIT_ERROR, EXIT_NOT_FOUND = 0, 1, 3


def _cmd_head(args: argparse.Namespace) -> int:
    loc = Locator.parse(args.locator)
    store = open_store(args)
    with store:
        try:
            store.head(loc)
        except BlockNotFound:
            if not args.json:
                raise
            print(json.dumps({"locator": str(loc), "present": False}))
            return EXIT_NOT_FOUND
    print(json.dumps({"locator": str(loc), "present": True}) if args.json else f"{loc} present")
    return EXIT_OK


_SHOWN = ("services", "token", "api_host", "insecure", "ca_file", "local_store", "cache_dir", "cache_max_bytes",
          "copies", "retries", "deadline", "threads", "timeout", "proxy")


def config_report(settings: Any) -> dict[str, Any]:
    """What `keep config` shows: the store in effect and each setting with where it came from.

    The token is never shown, only whether it is set and where from.
    """
    values: dict[str, Any] = {}
    for name in _SHOWN:
        value = getattr(settings, name)
        if name == "token":
            value = "***" if value else None
        elif name == "services":
            value = list(value)
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = str(value)
        origin = settings.sources.get(name)
        values[name] = {"value": value, "from": str(origin) if origin is not None else "default"}
    mode = str(settings.mode)
    store = {"services": " ".join(settings.services), "api": f"services discovered from {settings.api_host}",
             "local": f"LocalStore at {settings.store_path}"}[mode]
    return {"mode": mode, "store": store, "config_file": settings.config_path, "settings": values,
            **profiles_report(settings.config_path)}


def profiles_report(config_path: str | None) -> dict[str, Any]:
    """The config file's ``profiles:`` (for ``keep copy --to NAME``): each one's store, and
    where its token comes from (never the token); a broken section is reported, not raised."""
    from ..errors import ConfigError
    from ..profiles import load_profiles

    if config_path is None:
        return {"profiles": {}}
    try:
        found = load_profiles(config_path=config_path)
    except ConfigError as exc:
        return {"profiles": {}, "profiles_error": str(exc)}
    shown: dict[str, Any] = {}
    for name, entry in found.items():
        if entry.local_store is not None:
            shown[name] = {"store": f"LocalStore at {entry.local_store}"}
            continue
        token = (f"from {entry.token_file}" if entry.token_file
                 else "from the profile" if entry.token else "the configured one")
        shown[name] = {"store": " ".join(entry.services), "copies": entry.copies, "token": token}
    return {"profiles": shown}


def _cmd_config(args: argparse.Namespace) -> int:
    from ..settings import Settings

    report = config_report(Settings.from_env())
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_ERROR if "profiles_error" in report else EXIT_OK
    print(f"store: {report['store']}")
    print(f"config file: {report['config_file'] or '(none read)'}")
    width = max(len(name) for name in report["settings"])
    for name, entry in report["settings"].items():
        value = entry["value"]
        shown = "(not set)" if value is None else " ".join(value) if isinstance(value, list) else value
        print(f"{name:<{width}}  {shown}  [{entry['from']}]")
    for name, entry in report["profiles"].items():
        extra = "; ".join(f"{key} {entry[key]}" for key in ("copies", "token") if entry.get(key) is not None)
        print(f"profile {name}: {entry['store']}" + (f" ({extra})" if extra else ""))
    if "profiles_error" in report:
        print(f"keep config: {report['profiles_error']}", file=sys.stderr)
        return EXIT_ERROR  # as any command meeting a broken config file
    return EXIT_OK


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep head`` and ``keep config`` to the command line."""
    head = sub.add_parser("head", help="check that a block is stored (exit 3 when it is not)",
                          description="Ask the store whether a block is stored; exit 0 when it is, 3 when not.")
    head.add_argument("locator", help="block locator")
    head.add_argument("--json", action="store_true",
                      help='print {"locator": ..., "present": true|false} (exit codes as without it)')
    head.set_defaults(func=_cmd_head)

    config = sub.add_parser("config", help="show the store, services and settings in effect, and where each came from",
                            description="Show the store keep would use, the config file read, and every setting "
                                        "with where its value came from (argument, environment, file or default), "
                                        "and the config file's profiles. The token is never printed.")
    config.add_argument("--json", action="store_true", help="print the report as JSON")
    config.set_defaults(func=_cmd_config)
