"""The ``keep check`` and ``keep repair`` sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..lifecycle.check import (
    EXIT_HEALTHY,
    EXIT_MISSING,
    EXIT_UNDER_REPLICATED,
    CheckReport,
    check_blocks,
    expand_locators,
)
from ..lifecycle.repair import RepairReport, repair_blocks
from .types import positive_int, read_secret

__all__ = ["register"]

EXIT_CODES = (f"exit codes: {EXIT_HEALTHY} healthy, 1 error, 2 usage, {EXIT_UNDER_REPLICATED} under-replicated "
              f"(some block has fewer good copies than wanted), {EXIT_MISSING} missing data (some block has "
              "no good copy)")


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most 100")
    return value




def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("locators", nargs="+", metavar="LOCATOR", help="dataset or block locators")
    parser.add_argument("--copies", type=positive_int, default=None,
                        help="good copies wanted (default: the configured copies)")
    parser.add_argument("--read-data", type=_percent, nargs="?", const=100.0, default=0.0, metavar="PERCENT",
                        help="read back this share of the blocks (default all) from every service and verify "
                             "size and md5, instead of only asking (HEAD)")
    parser.add_argument("--threads", type=positive_int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def register(sub: Any) -> None:
    check = sub.add_parser("check", help="count and verify the replicas of datasets or blocks",
                           description="Ask every service about every block and report missing and "
                                       "under-replicated ones.", epilog=EXIT_CODES)
    _common(check)
    check.set_defaults(func=_cmd_check)
    repair = sub.add_parser("repair", help="re-replicate under-replicated blocks from a verified copy",
                            description="Check, then copy each block below its copies from a good replica "
                                        "(or the disk cache), verified, to the services that lack it.",
                            epilog=EXIT_CODES)
    _common(repair)
    repair.set_defaults(func=_cmd_repair)
    gc = sub.add_parser("gc", help="delete the blocks no dataset references (see --dry-run)",
                        description="Mark every block the roots reference, then delete the other blocks "
                                    "older than the grace period: from a local store, or from every Keep "
                                    "service (listed with /index, trashed with DELETE; needs the system token).")
    gc.add_argument("roots", nargs="*", metavar="LOCATOR", help="dataset or block locators to keep")
    gc.add_argument("--keep-from", action="append", default=[], metavar="FILE",
                    help="a keep put --json receipt whose dataset to keep (repeatable)")
    gc.add_argument("--grace", default="14d", help="keep blocks newer than this (e.g. 3600s, 2h, 14d; default 14d)")
    gc.add_argument("--older-than", default=None, metavar="TIME",
                    help="also keep blocks newer than this ISO 8601 time (e.g. 2026-11-01T00:00Z)")
    gc.add_argument("--dry-run", action="store_true", help="list what would go, and how many bytes; delete nothing")
    gc.add_argument("--system-token-file", type=Path, metavar="FILE",
                    help="the services' system token (Keep services only: /index and DELETE need it)")
    gc.add_argument("--threads", type=positive_int, default=8, help="DELETE requests in flight (default 8)")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    gc.set_defaults(func=_cmd_gc)
    copy = sub.add_parser("copy", help="copy a dataset to another store, sending only the blocks it lacks",
                          description="Copy a dataset from the configured store to other Keep services or a "
                                      "local store: blocks the destination lacks are sent (in parallel, "
                                      "verified), the manifest is stored there with the destination's "
                                      "locators, and the destination's dataset locator is printed. "
                                      "Re-running sends nothing already there.")
    copy.add_argument("locator", metavar="LOCATOR", help="the dataset locator (at the source)")
    to = copy.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-services", nargs="+", metavar="URL", help="the destination's Keep service roots")
    to.add_argument("--to-local", type=Path, metavar="DIR", help="a local store directory as the destination")
    to.add_argument("--to", dest="to_profile", metavar="NAME",
                    help="a profile of the config file's profiles: mapping (services, token or token_file, "
                         "copies; or local_store) as the destination")
    copy.add_argument("--to-token-file", type=Path, metavar="FILE",
                      help="the token for the destination services (default: the profile's, else the "
                           "configured token)")
    copy.add_argument("--copies", type=positive_int, default=None,
                      help="copies at the destination (default: the profile's, else the configured copies)")
    copy.add_argument("--threads", type=positive_int, default=8, help="blocks in flight (default 8)")
    copy.add_argument("--json", action="store_true", help="print the report as JSON")
    copy.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    copy.set_defaults(func=_cmd_copy)


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int | None, desc: str,
              unit: str = "block") -> Iterator[Callable[[int], Any]]:
    if args.no_progress or args.json or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, file=sys.stderr, leave=False) as bar:
        yield bar.update


def _run_check(args: argparse.Namespace, store: Any) -> CheckReport:
    blocks = expand_locators(store, args.locators)
    copies = args.copies or getattr(store, "copies", 1)
    with _progress(args, len(blocks), "check") as progress:
        return check_blocks(store, blocks, copies=copies, read_fraction=args.read_data / 100.0,
                            threads=args.threads, progress=progress)


def _cmd_check(args: argparse.Namespace) -> int:
    from ..open import open_store

    with open_store(args) as store:
        report = _run_check(args, store)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return report.exit_code
    for block in report.problems():
        detail = "; ".join(f"{r.state.value} on {r.where}" + (f" ({r.note})" if r.note else "")
                           for r in block.replicas if not r.state.counts)
        print(f"{block.locator.bare()} {block.state}: {len(block.good)} of {block.copies} copies ({detail})")
    t = report.totals()
    print(f"checked {t['blocks']} blocks ({t['bytes']} bytes; {t['read']} read back): {t['healthy']} healthy, "
          f"{t['under_replicated']} under-replicated, {t['missing']} missing, "
          f"{t['damaged_replicas']} damaged replicas")
    return report.exit_code


def _cmd_repair(args: argparse.Namespace) -> int:
    from ..open import open_store

    with open_store(args) as store:
        from ..client import KeepClient

        if not isinstance(store, KeepClient):
            raise ConfigError("keep repair needs Keep services: a local store is one copy, with nothing to "
                              "repair it from (use keep check to verify it)")
        report = _run_check(args, store)
        with _progress(args, len(report.blocks), "repair") as progress:
            receipt = repair_blocks(store, report, threads=args.threads, progress=progress)
    _print_receipt(args, receipt)
    return receipt.exit_code


def _print_receipt(args: argparse.Namespace, receipt: RepairReport) -> None:
    if args.json:
        print(json.dumps(receipt.to_dict(), indent=2))
        return
    for block in receipt.blocks:
        if block.state == "healthy":
            continue
        wrote = (f"copied from {block.source} to {', '.join(block.written_to)}" if block.written_to
                 else "nothing written")
        line = f"{block.locator.bare()} {block.state}: {block.after} of {block.copies} copies; {wrote}"
        print(line + (f" ({block.error})" if block.error else ""))
    t = receipt.totals()
    print(f"repaired {t['repaired']} of {t['blocks']} blocks: {t['replicas_written']} replicas "
          f"({t['bytes_written']} bytes) written; {t['under_replicated']} still under-replicated, "
          f"{t['missing']} with no good copy")


def _cmd_gc(args: argparse.Namespace, now: datetime.datetime | None = None) -> int:
    from ..lifecycle import gc
    from ..local import LocalStore
    from ..open import open_store

    roots, keep = list(args.roots), []
    for path in args.keep_from:
        read, unread = gc.receipt_roots(path)
        roots.extend(read)
        keep.extend(unread)
    if not roots:
        raise ConfigError("keep gc needs roots (locators or --keep-from receipts): without any, every block "
                          "would be unreferenced")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cutoff = now - gc.parse_duration(args.grace)
    if args.older_than is not None:
        cutoff = min(cutoff, gc.parse_time(args.older_than))
    with open_store(args) as store:
        if not isinstance(store, LocalStore):
            return _cluster_gc(args, store, gc.mark(store, roots, keep), cutoff)
        report = gc.collect(store, gc.mark(store, roots, keep), cutoff, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_HEALTHY
    verb = "would delete" if args.dry_run else "deleted"
    for c in report.candidates:
        print(f"{c.md5}+{c.size} {c.mtime.isoformat()}")
    count = len(report.candidates) if args.dry_run else len(report.deleted)
    print(f"{verb} {count} blocks ({sum(c.size for c in report.candidates)} bytes); kept {report.live} "
          f"referenced and {report.kept_young} newer than {report.cutoff.isoformat()}")
    return EXIT_HEALTHY


def _cluster_gc(args: argparse.Namespace, store: Any, live: set[str], cutoff: datetime.datetime) -> int:
    from ..client import KeepClient
    from ..lifecycle.gc_cluster import collect_cluster

    if not isinstance(store, KeepClient):
        raise ConfigError(f"keep gc needs a local store or Keep services, not {type(store).__name__}")
    if args.system_token_file is None:
        raise ConfigError("keep gc on Keep services needs --system-token-file (the token that may list and "
                          "DELETE blocks)")
    token = read_secret(args.system_token_file, "system token")
    with _progress(args, None, "gc") as progress:
        report = collect_cluster(store, live, cutoff, system_token=token, dry_run=args.dry_run,
                                 threads=args.threads, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for c in report.candidates:
            note = f" ({c.note})" if c.note else ""
            print(f"{c.md5}+{c.size} {c.mtime.isoformat()} {c.service} {c.outcome}{note}")
        verb = "would trash" if args.dry_run else "trashed"
        count = len(report.candidates) if args.dry_run else report.count("trashed", "requested")
        print(f"{verb} {count} block copies ({sum(c.size for c in report.candidates)} bytes); kept {report.live} "
              f"referenced and {report.kept_young} copies newer than {report.cutoff.isoformat()}"
              + (f"; {len(report.failed)} DELETEs failed" if report.failed else ""))
    return 1 if report.failed else EXIT_HEALTHY


def _cmd_copy(args: argparse.Namespace) -> int:
    from ..lifecycle.copy import copy_dataset
    from ..local import LocalStore
    from ..open import open_store

    copies = args.copies
    named = None
    if args.to_profile is not None:  # a bad or unknown profile is reported before anything is opened
        from ..profiles import profile

        named = profile(args.to_profile)
    with open_store(args) as source:
        dest: Any
        if named is not None:
            token = read_secret(args.to_token_file, "destination token") if args.to_token_file else None
            dest = named.open(copies=copies, token=token)
        elif args.to_local is not None:
            dest = LocalStore(args.to_local)
        else:
            from ..client import KeepClient

            overrides: dict[str, Any] = {"services": tuple(args.to_services)}
            if args.to_token_file is not None:
                overrides["token"] = read_secret(args.to_token_file, "destination token")
            if copies is not None:
                overrides["copies"] = copies
            dest = KeepClient.from_env(**overrides)
        with dest, _progress(args, None, "copy", unit="B") as progress:
            report = copy_dataset(source, dest, args.locator, copies=copies, threads=args.threads, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        t = report.to_dict()
        print(f"sent {t['sent']} of {t['blocks']} blocks ({t['bytes_sent']} bytes); {t['skipped']} were there",
              file=sys.stderr)
        print(report.locator)
    return EXIT_HEALTHY

