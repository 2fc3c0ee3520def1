"""KeepClient passes the shared BlockStore contract suite over real loopback Keep servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from keepstub import KeepStub

from contract.store_contract import StoreContract
from keepstore import KeepClient
from keepstore.store import BlockStore


class TestKeepClientContract(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[BlockStore]:
        stubs = [KeepStub() for _ in range(3)]
        try:
            with KeepClient([s.url for s in stubs], token="contract-token", retries=2,
                            sleep=lambda seconds: None) as kc:
                yield kc
        finally:
            for s in stubs:
                s.stop()
