"""Fixtures for hosts and clusters: real sshd hosts in network namespaces, a state store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from appliance.store.state import StateStore
from tests.cluster.testhosts import HostFarm

FIXTURES = Path(__file__).parent / "data"


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[HostFarm]:
    """Start hosts with ``farm.start("h1", "h2")`` (or create, put files, then start)."""
    hosts = HostFarm(tmp_path / "hosts")
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    s = StateStore(tmp_path / "data")
    await s.open()
    yield s
    await s.close()
