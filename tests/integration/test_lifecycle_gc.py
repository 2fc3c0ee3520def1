"""keep gc on a LocalStore: referenced and young blocks stay, old unreferenced ones go."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from keepstore import LocalStore
from keepstore.cli import main
from keepstore.datasets import DatasetWriter
from keepstore.errors import ConfigError
from keepstore.lifecycle.gc import parse_duration, parse_time

OLD = datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc).timestamp()
YOUNG = datetime.datetime(2025, 6, 1, tzinfo=datetime.timezone.utc).timestamp()
CUTOFF = "2025-01-01T00:00Z"  # between the two (and long before now minus the grace)


@pytest.fixture
def store(monkeypatch, tmp_path: Path) -> LocalStore:
    for name in list(os.environ):
        if name.startswith(("KEEP_", "ARVADOS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    s = LocalStore(tmp_path / "blocks", fsync=False)
    monkeypatch.setenv("KEEP_LOCAL_STORE", str(s.root))
    return s


def age(store: LocalStore, loc, when: float) -> None:
    path = store.find(loc.md5)
    assert path is not None
    os.utime(path, (when, when))


def dataset(store: LocalStore, name: str):
    writer = DatasetWriter(store, block_size=1024)
    writer.add_bytes(f"{name}.txt", name.encode() * 1000)
    return writer.finish()


def gc(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["gc", *args, "--older-than", CUTOFF, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_gc_keeps_referenced_and_young_blocks_and_deletes_old_unreferenced_ones(store, capsys, tmp_path):
    live = dataset(store, "live")
    kept = dataset(store, "kept-by-receipt")
    (tmp_path / "receipt.json").write_text(kept.to_json())
    young = store.put(b"unreferenced but young")
    old = [store.put(f"old garbage {i}".encode()) for i in range(3)]
    for md5, _size, _mtime in list(store.index()):
        os.utime(store.find(md5), (OLD, OLD))
    age(store, young, YOUNG)
    everything = {md5 for md5, _s, _m in store.index()}

    code, report = gc(capsys, live.locator, "--keep-from", str(tmp_path / "receipt.json"), "--dry-run")
    assert code == 0 and report["dry_run"] is True
    assert {c["locator"] for c in report["candidates"]} == {str(loc) for loc in old}
    assert report["bytes"] == sum(loc.size for loc in old) and report["deleted"] == []
    assert report["kept_young"] == 1
    assert {md5 for md5, _s, _m in store.index()} == everything  # a dry run deletes nothing

    code, report = gc(capsys, live.locator, "--keep-from", str(tmp_path / "receipt.json"))
    assert code == 0 and sorted(report["deleted"]) == sorted(str(loc) for loc in old)
    assert {md5 for md5, _s, _m in store.index()} == everything - {loc.md5 for loc in old}
    for receipt in (live, kept):  # both datasets still read back whole
        assert main(["check", receipt.locator]) == 0
    assert store.get(young) == b"unreferenced but young"


def test_gc_refuses_when_a_root_cannot_be_read_and_deletes_nothing(store, capsys):
    store.put(b"garbage")
    for md5, _size, _mtime in list(store.index()):
        os.utime(store.find(md5), (OLD, OLD))
    capsys.readouterr()
    assert main(["gc", "acbd18db4cc2f85cedef654fccc4a4d8+3", "--older-than", CUTOFF]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    assert len(list(store.index())) == 1
    assert main(["gc", "--older-than", CUTOFF]) == 1  # no roots at all
    assert "needs roots" in capsys.readouterr().err
    assert len(list(store.index())) == 1


def test_gc_text_output_and_bad_times(store, capsys):
    live = dataset(store, "live")
    garbage = store.put(b"garbage")
    age(store, garbage, OLD)
    capsys.readouterr()
    assert main(["gc", live.locator, "--older-than", CUTOFF, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{garbage} 2024-06-01T00:00:00+00:00" in out and "would delete 1 blocks (7 bytes)" in out
    assert main(["gc", live.locator, "--older-than", "next tuesday"]) == 1
    assert "invalid time 'next tuesday'" in capsys.readouterr().err
    assert main(["gc", live.locator, "--grace", "fortnight"]) == 1
    assert "invalid duration 'fortnight'" in capsys.readouterr().err
    assert store.get(garbage) == b"garbage"


def test_gc_on_keep_services_stops_at_a_root_it_cannot_read(keep_cluster, monkeypatch, capsys):
    """(A cluster gc is tested in tests/test_gc_cluster.py.)"""
    for key, value in keep_cluster.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KEEP_LOCAL_STORE", raising=False)
    assert main(["gc", "acbd18db4cc2f85cedef654fccc4a4d8+3"]) == 1
    assert "nothing deleted" in capsys.readouterr().err


def test_durations_and_times():
    assert parse_duration("14d") == datetime.timedelta(days=14)
    assert parse_duration("90") == parse_duration("90s") == datetime.timedelta(seconds=90)
    assert parse_duration("2w") == datetime.timedelta(days=14)
    assert parse_time("2026-11-01T00:00Z") == datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    assert parse_time("2026-11-01T02:00+02:00") == parse_time("2026-11-01T00:00Z")
    assert parse_time("2026-11-01").tzinfo is datetime.timezone.utc  # no zone: UTC
    with pytest.raises(ConfigError):
        parse_duration("-5d")
