"""The real Arvados Python client against `keep serve`, and both clients through the same servers."""

from __future__ import annotations

import hashlib
import os

import arvados
import arvados.errors
import arvados.keep
import pytest

from keepstore import Locator, probe_order
from keepstore.testing import KeepCluster

TOKEN = "v2/zzzzz-gj3su-000000000000000/secret123"
KEY = "testkey0123456789"
MiB = 1 << 20


def _arvados(cluster: KeepCluster) -> arvados.keep.KeepClient:
    return arvados.keep.KeepClient(proxy=cluster.services, api_token=TOKEN, local_store="", num_retries=0)


@pytest.mark.compat
@pytest.mark.parametrize("size", [0, 3, MiB + 1, 64 * MiB], ids=["0B", "3B", "1MiB+1", "64MiB"])
def test_arvados_client_puts_gets_and_heads_through_keep_serve(keep_cluster_factory, size):
    cluster = keep_cluster_factory(1, signing_key=KEY, require_signatures=True)
    data = os.urandom(size)
    arv = arvados.keep.KeepClient(proxy=cluster.urls[0], api_token=TOKEN, local_store="", num_retries=0)
    text = arv.put(data, copies=1)
    loc = Locator.parse(text)
    assert (loc.md5, loc.size) == (hashlib.md5(data).hexdigest(), size)
    if size:
        assert loc.signature is not None, "keep serve signs PUT responses for the caller's token"
    assert arv.get(text) == data
    assert arv.head(text) is True


@pytest.mark.compat
def test_arvados_client_sees_a_missing_block_as_not_found(keep_cluster):
    arv = _arvados(keep_cluster)
    with pytest.raises(arvados.errors.NotFoundError):
        arv.get(f"{hashlib.md5(b'absent').hexdigest()}+6")


@pytest.mark.compat
def test_interop_both_ways_through_the_same_keep_serve_servers(keep_cluster_factory):
    cluster = keep_cluster_factory(4, signing_key=KEY)
    arv = _arvados(cluster)
    with cluster.client(token=TOKEN, retries=0) as kc:
        ours = [os.urandom(n) for n in (1, 1000, 2 * MiB)]
        for data in ours:
            loc = kc.put(data, copies=2)
            assert loc.signature is not None
            assert arv.get(str(loc)) == data
        for i in range(8):
            data = b"written by the arvados client %d" % i
            text = arv.put(data, copies=2)
            loc = Locator.parse(text)
            assert kc.get(text) == data
            top = sorted(probe_order(loc, kc.services)[:2], key=lambda s: s.root)
            holders = sorted(cluster.urls[i] for i in cluster.holders(loc))
            assert holders == [s.root for s in top], "both clients place replicas alike"


def test_refresh_signature_turns_a_remote_locator_into_a_local_one_as_the_arvados_sdk_does(keep_cluster_factory):
    from keepstore.locator import sign_locator

    cluster = keep_cluster_factory(2, signing_key=KEY, require_signatures=True)
    with cluster.client(token=TOKEN) as kc:
        stored = kc.put(b"federated block", copies=2)
        # keep serve cannot check the +R, so it re-signs only for a caller that also shows a valid +A
        remote = Locator.parse(f"{stored}+Rzzzzz-{'0' * 40}@7fffffff")
        ours = kc.refresh_signature(remote)
        assert ours.bare() == stored.bare() and ours.signature is not None
        assert ours == sign_locator(str(stored.bare()), key=KEY, token=TOKEN,
                                    expires_at=int(ours.permission_hint[-8:], 16))
        assert kc.get(ours) == b"federated block"
    theirs = Locator.parse(_arvados(cluster).refresh_signature(str(remote)).strip())  # the SDK keeps header space
    assert theirs.bare() == ours.bare() and theirs.signature is not None


def test_refresh_signature_of_a_block_nobody_has_is_block_not_found(keep_cluster_factory):
    from keepstore.errors import BlockNotFound

    cluster = keep_cluster_factory(2, signing_key=KEY)
    with cluster.client(token=TOKEN, retries=0) as kc, pytest.raises(BlockNotFound):
        kc.refresh_signature(f"{hashlib.md5(b'nowhere').hexdigest()}+7+Rzzzzz-{'0' * 40}@7fffffff")
