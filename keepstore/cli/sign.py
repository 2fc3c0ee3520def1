"""``keep sign``: an administrator re-signs a dataset (or a block) with the blob signing key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from ..lifecycle.sign import resign_dataset
from ..locator import DEFAULT_SIGNING_TTL, Locator, sign_locator
from ..open import open_store
from ..settings import Mode, Settings
from .types import positive_int, read_secret

__all__ = ["register"]

DESCRIPTION = """\
Give a dataset fresh signatures. A dataset written to servers that sign (keep serve
--signing-key-file) holds signed block locators, and they expire after the servers'
--signing-ttl. With the same key, keep sign fetches the manifest, signs every block locator
in it afresh for the token, stores the new manifest and prints the fresh dataset locator. The
content and its portable data hash do not change. The locator may be expired, or bare
(md5+size, as the receipt's portable data hash is not: use the receipt's "locator").
"""






def _cmd_sign(args: argparse.Namespace) -> int:
    key = read_secret(args.signing_key_file, "signing key")
    loc = Locator.parse(args.locator)
    settings = Settings.from_env()
    if args.block:
        token = read_secret(args.token_file, "token") if args.token_file else settings.token
        if not token:
            raise ConfigError("keep sign needs the token the signature is for: set KEEP_TOKEN or --token-file")
        print(sign_locator(loc.stripped(), key=key, token=token, ttl=args.ttl))
        return 0
    if settings.mode is Mode.LOCAL or not settings.token:
        raise ConfigError("keep sign re-signs datasets stored on Keep services: set KEEP_SERVICES and KEEP_TOKEN "
                          "(a local store does not sign)")
    with open_store(args) as store:
        signed = resign_dataset(store, loc, key=key, token=settings.token, ttl=args.ttl)
    if args.json:
        print(json.dumps(signed.to_dict(), indent=2))
    else:
        print(signed.locator)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``keep sign`` to the command line."""
    p = sub.add_parser("sign", help="re-sign a dataset with the blob signing key (signatures expire)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("locator", metavar="LOCATOR", help="the dataset's locator (signed, expired or bare md5+size)")
    p.add_argument("--signing-key-file", type=Path, required=True, metavar="FILE",
                   help="the blob signing key the servers use (keep serve --signing-key-file)")
    p.add_argument("--ttl", type=positive_int, default=DEFAULT_SIGNING_TTL, metavar="SECONDS",
                   help=f"the servers' --signing-ttl (default {DEFAULT_SIGNING_TTL}); part of the signature")
    p.add_argument("--block", action="store_true",
                   help="sign LOCATOR itself as a block, offline (no manifest is fetched or stored)")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="with --block: sign for the token in FILE instead of KEEP_TOKEN")
    p.add_argument("--json", action="store_true", help="print the locator, portable data hash and expiry as JSON")
    p.set_defaults(func=_cmd_sign)
