"""Fixtures for hosts and clusters: real sshd hosts in network namespaces, a state store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from appliance.store.state import StateStore
from tests.cluster.kubeapi import KubeApi, kube_api
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


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """One real kube-apiserver (1.20) with etcd per test session."""
    with kube_api(tmp_path_factory.mktemp("kube")) as api:
        yield api
