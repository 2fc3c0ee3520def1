"""The chaos engine shared by tests/test_chaos.py and tools/chaos: a cluster of keep servers,
a seeded stream of puts, gets and dataset writes and reads at copies=2, random faults, and a
final audit of everything that was acknowledged."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from keepstore.client import KeepClient
from keepstore.config import Retry, Timeout
from keepstore.datasets import DatasetReader, DatasetWriter
from keepstore.errors import BlockNotFound, KeepError
from keepstore.local import LocalStore
from keepstore.locator import Locator
from keepstore.server.faults import Fault, FaultKind
from keepstore.testing import KeepCluster

__all__ = ["ChaosConfig", "ChaosReport", "run_chaos"]

_LOCATOR_TEXT = re.compile(r"[0-9a-f]{32}\+[0-9]+")

_ANY = frozenset({"GET", "HEAD", "PUT"})
_GET = frozenset({"GET"})


@dataclasses.dataclass(frozen=True)
class Draw:
    """One entry of the fault menu: a `FaultPlan` rule, how often it is drawn, and whether its
    ``times`` is drawn too (1-4) or kept (rules that cost a read timeout each stay at one)."""

    rule: Fault
    weight: float = 1.0
    draw_times: bool = True

    def name(self) -> str:
        """The rule in FaultPlan terms: its kind and value, e.g. ``status 503``."""
        rule = self.rule
        value = f" {rule.value:g}" if rule.value else ""
        methods = "" if rule.methods == _ANY else f" {'+'.join(sorted(rule.methods))}"
        return f"{rule.kind}{value}{methods}"


# What the engine injects through the servers' FaultPlans (server stops, SIGKILLs and full
# volumes are scheduled apart). The client times out reads after 1 s below 16 KiB/s.
FAULT_MENU: tuple[Draw, ...] = (
    *(Draw(Fault(FaultKind.STATUS, _ANY, value=code), weight=0.25) for code in (500, 502, 503, 504)),
    Draw(Fault(FaultKind.STATUS, _ANY, value=429, retry_after=0.05)),
    Draw(Fault(FaultKind.DROP, _ANY)),
    *(Draw(Fault(FaultKind.STALL, methods, value=1.5), weight=1 / 3, draw_times=False)  # past the read timeout
      for methods in (_GET, frozenset({"HEAD"}), _ANY)),
    Draw(Fault(FaultKind.THROTTLE, _GET, value=4096), draw_times=False),  # below the minimum rate: aborted
    Draw(Fault(FaultKind.THROTTLE, _GET, value=400_000)),  # slow but acceptable
    Draw(Fault(FaultKind.TRUNCATE, _GET)),
    Draw(Fault(FaultKind.CORRUPT, _GET)),
    Draw(Fault(FaultKind.DELAY, _ANY, value=0.2)),
)


@dataclasses.dataclass(frozen=True)
class ChaosConfig:
    seed: int = 20261122
    operations: int = 1500
    servers: int = 4
    copies: int = 2
    workers: int = 4
    fault_every: int = 6  # one new fault rule every N operations (on average)
    restart_every: int = 300  # a server is stopped for a while every N operations
    full_every: int = 350  # a server's volume is full for a while every N operations
    max_block: int = 192 * 1024
    time_limit: float = 150.0  # stop issuing operations after this many seconds
    # The last server is a `keep serve` subprocess (no fault plan): restarts alternate between
    # stopping an in-process server and SIGKILLing this one.
    killable: bool = True


@dataclasses.dataclass
class ChaosReport:
    operations: int = 0
    by_kind: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    succeeded: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failed: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    faults_planned: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    faults_hit: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    restarts: int = 0
    kills: int = 0
    full_periods: int = 0
    blocks_acknowledged: int = 0
    datasets_acknowledged: int = 0
    blocks_lost: int = 0
    blocks_under_replicated: int = 0
    wrong_bytes: int = 0
    bad_failures: list[str] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)
    wrong: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        hit = ", ".join(f"{k}={v}" for k, v in sorted(self.faults_hit.items())) or "none"
        planned = ", ".join(f"{k}={v}" for k, v in sorted(self.faults_planned.items())) or "none"
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.by_kind.items()))
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items())) or "none"
        return [
            f"chaos: {self.operations} operations in {self.seconds:.1f}s ({kinds})",
            f"chaos: failed with a documented error: {sum(self.failed.values())} ({failed})",
            f"chaos: fault rules planned: {planned}",
            f"chaos: faulty responses served: {sum(self.faults_hit.values())} ({hit})",
            f"chaos: servers stopped and restarted: {self.restarts}, SIGKILLed and restarted: {self.kills}, "
            f"full-volume periods: {self.full_periods}",
            f"chaos: acknowledged blocks: {self.blocks_acknowledged}, datasets: {self.datasets_acknowledged}",
            f"chaos: blocks lost: {self.blocks_lost}, under-replicated: {self.blocks_under_replicated}, "
            f"wrong bytes returned: {self.wrong_bytes}, undocumented failures: {len(self.bad_failures)}",
        ]


class _KillableServer:
    """`keep serve` in a subprocess, SIGKILLed and started again on the same port."""

    def __init__(self, base_dir: Path, token: str) -> None:
        self.volume = base_dir / "killable"
        self.log = base_dir / "killable.log"
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.store = LocalStore(self.volume)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        if self.proc is not None:
            return
        with open(self.log, "a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "keepstore", "serve", "--create", "--listen", f"127.0.0.1:{self.port}",
                 "--volume", str(self.volume), "--quiet", "--idle-timeout", "10"],
                stdout=subprocess.PIPE, stderr=log, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            raise RuntimeError(f"keep serve did not start: {line!r}; see {self.log}")
        self.port = int(line.split()[-1].rsplit(":", 1)[1].strip("/"))
        self.proc = proc

    def kill(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def holds(self, md5: str) -> bool:
        return self.store.find(md5) is not None


class _Engine:
    def __init__(self, cluster: KeepCluster, config: ChaosConfig, report: ChaosReport,
                 killable: _KillableServer | None) -> None:
        self.cluster = cluster
        self.killable = killable
        self.urls = cluster.urls + ([killable.url] if killable else [])
        self.config = config
        self.report = report
        self.lock = threading.Lock()
        self.blocks: dict[str, bytes] = {}  # md5+size -> data, for every acknowledged put
        self.signed: dict[str, str] = {}  # md5+size -> locator as returned
        self.datasets: list[tuple[str, dict[str, bytes]]] = []
        self.client = self.new_client(
            copies=config.copies, threads=8,
            timeout=Timeout(connect=1.0, read=1.0, min_bandwidth=16384),
            retries=Retry(total=4, backoff_initial=0.02, backoff_max=0.2),
        )

    def new_client(self, **options: Any) -> KeepClient:
        return KeepClient(services=self.urls, token=self.cluster.token, **options)

    def holders(self, bare: str) -> int:
        md5 = bare.split("+")[0]
        return len(self.cluster.holders(bare)) + (1 if self.killable and self.killable.holds(md5) else 0)

    # -- data ---------------------------------------------------------------------------------

    @staticmethod
    def data_for(rng: random.Random, max_size: int) -> bytes:
        size = rng.choice((0, 1, 17, 4096, rng.randrange(1, max_size)))
        seed = rng.getrandbits(64).to_bytes(8, "big")
        return (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]

    # -- operations ---------------------------------------------------------------------------

    def failure(self, kind: str, exc: BaseException, expect: str | None) -> None:
        """Record a failed operation; flag it unless it is a KeepError naming the locator."""
        message = str(exc)
        ok = isinstance(exc, KeepError) and (
            (expect is not None and expect in message) or (expect is None and _LOCATOR_TEXT.search(message)))
        with self.lock:
            self.report.failed[f"{kind}:{type(exc).__name__}"] += 1
            if not ok:
                self.report.bad_failures.append(f"{kind}: {type(exc).__name__}: {message[:300]}")

    def wrong(self, what: str) -> None:
        with self.lock:
            self.report.wrong_bytes += 1
            self.report.wrong.append(what)

    def op_put(self, rng: random.Random) -> None:
        data = self.data_for(rng, self.config.max_block)
        bare = str(Locator.for_data(data))
        later = rng.random() < 0.5  # half through put_async: small blocks then go the put loop
        try:
            loc = self.client.put_async(data).result() if later else self.client.put(data)
        except Exception as exc:  # judged by failure(): any non-KeepError is flagged
            return self.failure("put", exc, bare.split("+")[0])
        with self.lock:
            self.blocks[bare] = data
            self.signed[bare] = str(loc)
            self.report.succeeded["put"] += 1
        return None

    def op_get(self, rng: random.Random) -> None:
        with self.lock:
            known = list(self.blocks)
        if not known or rng.random() < 0.05:  # a block nobody stored: BlockNotFound (or ReadError)
            data = rng.getrandbits(128).to_bytes(16, "big") + b"never stored"
            loc = str(Locator.for_data(data))
            try:
                self.client.get(loc)
            except KeepError as exc:
                if not isinstance(exc, BlockNotFound):
                    self.failure("get-missing", exc, loc.split("+")[0])
                else:
                    with self.lock:
                        self.report.succeeded["get-missing"] += 1
                return None
            except Exception as exc:
                return self.failure("get-missing", exc, loc)
            self.wrong(f"get of never-stored {loc} returned data")
            return None
        bare = rng.choice(known)
        with self.lock:
            loc, expected = self.signed[bare], self.blocks[bare]
        try:
            got = self.client.get(loc)
        except Exception as exc:
            return self.failure("get", exc, bare.split("+")[0])
        if got != expected:
            self.wrong(f"get {bare}: {len(got)} bytes, md5 {hashlib.md5(got).hexdigest()}")
        else:
            with self.lock:
                self.report.succeeded["get"] += 1
        return None

    def op_dataset_write(self, rng: random.Random) -> None:
        files = {f"dir{rng.randrange(3)}/file{i}.bin": self.data_for(rng, self.config.max_block)
                 for i in range(rng.randrange(1, 5))}
        try:
            writer = DatasetWriter(self.client, copies=self.config.copies, block_size=64 * 1024)
            with writer:
                for path, data in files.items():
                    writer.add_bytes(path, data)
                receipt = writer.finish()
        except Exception as exc:
            return self.failure("dataset-write", exc, None)
        with self.lock:
            self.datasets.append((receipt.locator, files))
            self.report.succeeded["dataset-write"] += 1
        return None

    def op_dataset_read(self, rng: random.Random) -> None:
        with self.lock:
            if not self.datasets:
                return None
            locator, files = rng.choice(self.datasets)
        try:
            reader = DatasetReader(self.client, locator)
            path = rng.choice(sorted(files))
            got = reader.read_bytes(path)
        except Exception as exc:
            return self.failure("dataset-read", exc, None)
        if got != files[path]:
            self.wrong(f"dataset {locator} file {path}: {len(got)} bytes")
        else:
            with self.lock:
                self.report.succeeded["dataset-read"] += 1
        return None

    # -- faults -------------------------------------------------------------------------------

    def inject(self, rng: random.Random) -> None:
        server = rng.choice(self.cluster.servers)
        draw = rng.choices(FAULT_MENU, [d.weight for d in FAULT_MENU])[0]
        times = rng.randint(1, 4) if draw.draw_times else draw.rule.times
        server.faults.add(dataclasses.replace(draw.rule, times=times))
        with self.lock:
            self.report.faults_planned[draw.name()] += 1


def run_chaos(config: ChaosConfig, base_dir: Path, log: Callable[[str], Any] = lambda s: None) -> ChaosReport:
    """Run the chaos workload in *base_dir*; return the figures (the caller asserts on them)."""
    report = ChaosReport()
    rng = random.Random(config.seed)
    started = time.monotonic()
    in_process = config.servers - (1 if config.killable else 0)
    cluster = KeepCluster(in_process, base_dir, fsync=False, idle_timeout=10.0).start()
    killable = _KillableServer(base_dir, cluster.token) if config.killable else None
    if killable is not None:
        killable.start()
    engine = _Engine(cluster, config, report, killable)
    ops = {"put": engine.op_put, "get": engine.op_get,
           "dataset-write": engine.op_dataset_write, "dataset-read": engine.op_dataset_read}
    weights = {"put": 40, "get": 40, "dataset-write": 8, "dataset-read": 12}
    stopped: tuple[int, int] | None = None  # (server index, operation to restart at); -1: the killable one
    full: tuple[int, int] | None = None
    try:
        with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="chaos") as pool:
            pending: collections.deque[Any] = collections.deque()
            for n in range(config.operations):
                if time.monotonic() - started > config.time_limit:
                    log(f"chaos: time limit reached after {n} operations")
                    break
                if rng.random() < 1 / config.fault_every:
                    engine.inject(rng)
                if stopped is not None and n >= stopped[1]:
                    if stopped[0] < 0:
                        assert killable is not None
                        killable.start()
                    else:
                        cluster.servers[stopped[0]].start()
                    stopped = None
                if stopped is None and n and n % config.restart_every == 0:
                    if killable is not None and (n // config.restart_every) % 2 == 1:
                        killable.kill()
                        report.kills += 1
                        stopped = (-1, n + config.restart_every // 3)
                    else:
                        index = rng.randrange(in_process)
                        cluster.servers[index].stop(grace=0.5)
                        report.restarts += 1
                        stopped = (index, n + config.restart_every // 3)
                if full is not None and n >= full[1]:
                    cluster.servers[full[0]].faults.clear()  # also ends that server's other rules
                    full = None
                if full is None and n and n % config.full_every == 0:
                    index = rng.randrange(in_process)
                    cluster.servers[index].faults.full(times=None)
                    report.full_periods += 1
                    full = (index, n + config.full_every // 3)
                kind = rng.choices(list(weights), list(weights.values()))[0]
                op_rng = random.Random(rng.getrandbits(64))
                report.by_kind[kind] += 1
                report.operations += 1
                pending.append(pool.submit(ops[kind], op_rng))
                while len(pending) >= config.workers * 2:
                    pending.popleft().result()
            for future in pending:
                future.result()
        report.seconds = time.monotonic() - started

        # -- audit: no faults, every server up, a fresh client --------------------------------
        for server in cluster.servers:
            server.faults.clear()
            server.start()
        if killable is not None:
            killable.start()
        for server in cluster.servers:
            for record in server.requests:
                if record.fault:
                    report.faults_hit[record.fault] += 1
        report.blocks_acknowledged = len(engine.blocks)
        report.datasets_acknowledged = len(engine.datasets)
        audit = engine.new_client(copies=config.copies)
        try:
            for bare, data in engine.blocks.items():
                try:
                    got = audit.get(engine.signed[bare])
                except KeepError as exc:
                    report.blocks_lost += 1
                    report.lost.append(f"{bare}: {exc}")
                    continue
                if got != data:
                    report.wrong_bytes += 1
                    report.wrong.append(f"audit {bare}")
                if data and engine.holders(bare) < config.copies:
                    report.blocks_under_replicated += 1
            for locator, files in engine.datasets:
                try:
                    reader = DatasetReader(audit, locator)
                    for path, data in files.items():
                        if reader.read_bytes(path) != data:
                            report.wrong_bytes += 1
                            report.wrong.append(f"audit dataset {locator} {path}")
                except KeepError as exc:
                    report.blocks_lost += 1
                    report.lost.append(f"dataset {locator}: {exc}")
        finally:
            audit.close()
            engine.client.close()
    finally:
        cluster.stop()
        if killable is not None:
            killable.kill()
    for line in report.lines():
        log(line)
    return report
