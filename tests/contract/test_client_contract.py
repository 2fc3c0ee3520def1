"""KeepClient passes the shared BlockStore contract suite over real loopback Keep servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.store_contract import StoreContract
from keepstore import KeepClient
from keepstore.server import KeepServer
from keepstore.store import BlockStore


class TestKeepClientContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[BlockStore]:
        servers = [KeepServer([tmp_path / f"volume{i}"], fsync=False).start() for i in range(3)]
        try:
            with KeepClient([s.url for s in servers], token="contract-token", retries=2,
                            sleep=lambda seconds: None) as kc:
                yield kc
        finally:
            for s in servers:
                s.stop(grace=1)
