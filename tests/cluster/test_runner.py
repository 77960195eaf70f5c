"""Host locks of playbook runs and the renderer's compiled-template cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.cluster.playbook import PlaybookError, Renderer
from appliance.cluster.runner import acquire_host_locks, release_host_lock, release_host_locks
from appliance.store.state import StateStore


async def test_host_locks_taken_in_one_go(store: StateStore) -> None:
    dead = 4_194_305  # above the kernel's largest pid_max: no such process
    await store.executemany(
        "INSERT INTO host_locks (host, install_id, pid, acquired_at) VALUES (?,?,?,0)",
        [("live", "ins_other", os.getpid()), ("stale", "ins_gone", dead),
         ("mine", "ins_1", os.getpid())])
    busy = await acquire_host_locks(store, ["a", "live", "stale", "mine", "a"], "ins_1")
    assert list(busy) == ["live"] and busy["live"].code == "host_busy"
    assert "locked by install ins_other" in busy["live"].message
    rows = {r["host"]: r["install_id"] for r in await store.fetchall(
        "SELECT host, install_id FROM host_locks")}
    assert rows == {"a": "ins_1", "live": "ins_other", "stale": "ins_1", "mine": "ins_1"}

    await release_host_lock(store, "a", "ins_1")
    await release_host_locks(store, "ins_1")
    assert [r["host"] for r in await store.fetchall("SELECT host FROM host_locks")] == ["live"]


def test_renderer_compiles_once_and_still_fails_loudly(tmp_path: Path) -> None:
    r = Renderer(tmp_path)
    assert r.text("x={{ v }}", {"v": 1}) == "x=1"
    assert r.text("x={{ v }}", {"v": 2}) == "x=2"
    assert r.expr("v > 1", {"v": 2}) is True
    assert r.expr("v > 1", {"v": 0}) is False
    assert len(r._templates) == 1 and len(r._expressions) == 1
    for _ in range(2):
        with pytest.raises(PlaybookError, match="cannot render"):
            r.text("{{ nope }}", {})
        with pytest.raises(PlaybookError, match="cannot evaluate"):
            r.expr("v >", {"v": 1})
