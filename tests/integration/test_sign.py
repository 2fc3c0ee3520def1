"""keep sign: an expired dataset on signing servers becomes readable again, with the same content."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keepstore import sign_locator, verify_signature
from keepstore.datasets import DatasetReader, DatasetWriter, Manifest
from keepstore.lifecycle.sign import resign_manifest_text
from keepstore.testing import KeepCluster

KEY = "the blob signing key of this deployment"
FILES = {"a.txt": b"alpha\n" * 100, "dir/b.bin": bytes(range(256)) * 40}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("sign")
    with KeepCluster(2, base, signing_key=KEY, require_signatures=True) as c:
        yield c


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "blob-signing.key"
    path.write_text(KEY + "\n")
    return path


def keep(cluster: KeepCluster, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``keep`` against *cluster*; stdout is bytes decoded as latin-1 (every byte kept)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    clean.update(cluster.env(), HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
                 XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"), **env)
    done = subprocess.run([sys.executable, "-m", "keepstore", *args], env=clean, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("latin-1"),
                                       done.stderr.decode("utf-8", "replace"))


def expired_dataset(cluster: KeepCluster) -> tuple[str, str]:
    """A dataset whose manifest and locator carry signatures that expired a week ago; and its pdh."""
    three_weeks_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(weeks=3)
    with cluster.client(copies=2) as kc:
        writer = DatasetWriter(kc, copies=2)
        for path, data in FILES.items():
            writer.add_bytes(path, data)
        receipt = writer.finish()
        text = kc.get(receipt.locator).decode()
        old_text, _ = resign_manifest_text(text, key=KEY, token=cluster.token, now=three_weeks_ago)
        stored = kc.put(old_text.encode(), copies=2)
    old = sign_locator(stored.stripped(), key=KEY, token=cluster.token, now=three_weeks_ago)
    assert old.is_expired()
    return str(old), receipt.portable_data_hash


def test_an_expired_dataset_is_refused_and_keep_sign_makes_it_readable_with_the_same_content(
        cluster: KeepCluster, key_file: Path, tmp_path: Path) -> None:
    old, pdh = expired_dataset(cluster)
    refused = keep(cluster, tmp_path, "cat", f"{old}/a.txt")
    assert refused.returncode == 1
    assert "401" in refused.stderr and KEY not in refused.stderr and cluster.token not in refused.stderr

    signed = keep(cluster, tmp_path, "sign", old, "--signing-key-file", str(key_file), "--json")
    assert signed.returncode == 0, signed.stderr
    report = json.loads(signed.stdout)
    assert report["portable_data_hash"] == pdh
    assert report["signed_locators"] == 2  # one block, named in both streams
    fresh = report["locator"]
    assert verify_signature(fresh, key=KEY, token=cluster.token)
    assert dt.datetime.fromisoformat(report["expires_at"]) > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=13)

    for path, data in FILES.items():
        got = keep(cluster, tmp_path, "cat", f"{fresh}/{path}")
        assert got.returncode == 0, got.stderr
        assert got.stdout.encode("latin-1") == data
    with cluster.client() as kc:
        manifest = DatasetReader(kc, fresh).manifest
        assert manifest.portable_data_hash() == pdh
        assert all(verify_signature(b, key=KEY, token=cluster.token) for b in manifest.blocks())


def test_resigning_keeps_every_byte_but_the_signatures() -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    token = "some-token-0123456789"
    old = sign_locator("acbd18db4cc2f85cedef654fccc4a4d8+3", key="an older key", token="t" * 20, expires_at=1)
    plain, hinted = "37b51d194a7513e45b56f6524f2d51f2+3", "37b51d194a7513e45b56f6524f2d51f2+3+K@zzzzz"
    template = ". {0} {1} 0:6:foo\\040bar\n./d {2} 0:3:x 0:0:empty\n"
    text = template.format(old, plain, hinted)
    fresh, count = resign_manifest_text(text, key=KEY, token=token, now=now)
    assert count == 3
    assert fresh == template.format(*(sign_locator(loc, key=KEY, token=token, now=now) for loc in (old, plain, hinted)))
    assert Manifest.parse(fresh).portable_data_hash() == Manifest.parse(text).portable_data_hash()
    assert all(verify_signature(b, key=KEY, token=token, now=now) for b in Manifest.parse(fresh).blocks())


def test_keep_sign_of_a_data_block_says_it_is_not_a_dataset_and_stores_nothing(
        cluster: KeepCluster, key_file: Path, tmp_path: Path) -> None:
    with cluster.client(copies=2) as kc:
        loc = kc.put(b"\x00\x01 not a manifest", copies=2)
    before = [len(s.requests) for s in cluster.servers]
    result = keep(cluster, tmp_path, "sign", str(loc), "--signing-key-file", str(key_file))
    assert result.returncode == 1
    assert "is not a dataset" in result.stderr and "--block" in result.stderr
    new = [r for s, n in zip(cluster.servers, before, strict=True) for r in list(s.requests)[n:]]
    assert new and not any(r.method == "PUT" for r in new)


def test_keep_sign_block_signs_offline_for_the_token(cluster: KeepCluster, key_file: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "other.token"
    token_file.write_text("another-token-abcdefghijklmnop\n")
    result = keep(cluster, tmp_path, "sign", "--block", "acbd18db4cc2f85cedef654fccc4a4d8+3",
                  "--signing-key-file", str(key_file), "--token-file", str(token_file), KEEP_SERVICES="")
    assert result.returncode == 0, result.stderr
    assert verify_signature(result.stdout.strip(), key=KEY, token="another-token-abcdefghijklmnop")
    assert not verify_signature(result.stdout.strip(), key=KEY, token=cluster.token)


def test_keep_sign_with_the_wrong_key_fails_cleanly(cluster: KeepCluster, tmp_path: Path) -> None:
    old, _ = expired_dataset(cluster)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not the key")
    result = keep(cluster, tmp_path, "sign", old, "--signing-key-file", str(wrong))
    assert result.returncode == 1
    assert "400" in result.stderr and "not the key" not in result.stderr


def test_keep_sign_needs_keep_services(tmp_path: Path, key_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEP_", "ARVADOS_"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "c"), XDG_DATA_HOME=str(tmp_path / "d"))
    result = subprocess.run([sys.executable, "-m", "keepstore", "sign", "acbd18db4cc2f85cedef654fccc4a4d8+3",
                             "--signing-key-file", str(key_file)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "KEEP_SERVICES" in result.stderr
