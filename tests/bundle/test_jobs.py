"""Server-side imports: streaming upload, progress of jobs, USB watch directories."""

from __future__ import annotations

import asyncio
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any

from tests.bundle.conftest import MakeBundle
from tests.conftest import AppFactory


def _tar(bundle: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tar:
        tar.add(bundle, arcname=".")


async def _wait(client: Any, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        resp = await client.get(f"/api/bundles/imports/{job_id}")
        job: dict[str, Any] = await resp.json()
        if job["state"] in ("success", "error"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import job {job_id} did not finish: {job}")


async def _imports_audited(client: Any) -> list[dict[str, Any]]:
    """The ``bundle.import`` audit entries, oldest first."""
    for _ in range(50):  # written just after the job finishes
        entries = await (await client.get("/api/audit?action=bundle.import")).json()
        if entries:
            return list(reversed(entries))
        await asyncio.sleep(0.05)
    return []


async def test_streaming_upload_with_progress(appliance: AppFactory, make_bundle: MakeBundle,
                                              data_dir: Path, tmp_path: Path) -> None:
    client: Any = await appliance({"auth": {"required": False}})
    bundle = make_bundle()
    tar = tmp_path / "b.tar"
    _tar(bundle, tar)

    async def body() -> Any:
        data = tar.read_bytes()
        for i in range(0, len(data), 10_000):
            yield data[i:i + 10_000]

    resp = await client.post("/api/bundles", data=body())
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["bytes_received"] == tar.stat().st_size
    job = await _wait(client, started["id"])
    assert job["state"] == "success", job
    assert job["percent"] == 100.0 and job["bytes_done"] == job["bytes_total"] > 0
    assert {"rate_bytes_s", "eta_s"} <= set(job)
    assert job["result"]["models"] == ["my-local-model"]
    models = await (await client.get("/api/models")).json()
    assert [m["name"] for m in models] == ["my-local-model"]
    assert not list((data_dir / "uploads").iterdir())  # the upload is deleted afterwards
    listed = await (await client.get("/api/bundles/imports")).json()
    assert [j["id"] for j in listed] == [started["id"]]
    [entry] = await _imports_audited(client)
    assert entry["outcome"] == "success" and entry["target"] == job["result"]["bundle_id"]
    assert entry["actor"] == "system"  # auth is off here
    assert entry["detail"]["models"] == ["my-local-model"]


async def test_upload_of_an_unsigned_bundle_fails_visibly(appliance: AppFactory,
                                                          make_bundle: MakeBundle,
                                                          tmp_path: Path) -> None:
    client: Any = await appliance({"auth": {"required": False}})
    tar = tmp_path / "u.tar"
    _tar(make_bundle(sign=False), tar)
    resp = await client.post("/api/bundles", data=tar.read_bytes())
    job = await _wait(client, (await resp.json())["id"])
    assert job["state"] == "error" and "not signed" in job["error"]
    [entry] = await _imports_audited(client)
    assert entry["outcome"] == "failure" and "not signed" in entry["detail"]["error"]
    assert (await client.get("/api/bundles/imports/imp_nope")).status == 404
    assert (await client.post("/api/bundles", data=b"")).status == 400


async def test_watch_directory_imports_a_stick_once_stable(
        appliance: AppFactory, make_bundle: MakeBundle, data_dir: Path, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    client: Any = await appliance({"auth": {"required": False},
                                   "bundle": {"watch_dirs": [str(media)],
                                              "watch_interval_s": 0.1}})
    bundle = make_bundle()
    await asyncio.sleep(0.3)
    shutil.copytree(bundle, media / "usb0" / "bundle")  # a stick being mounted
    for _ in range(100):
        jobs = await (await client.get("/api/bundles/imports")).json()
        if jobs and jobs[-1]["state"] == "success":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no import from the watch directory: {jobs}")
    assert len(jobs) == 1 and jobs[0]["origin"] == "watch"
    await asyncio.sleep(0.5)
    assert len(await (await client.get("/api/bundles/imports")).json()) == 1  # imported once
    [entry] = await _imports_audited(client)
    assert entry["actor"] == "system:watch-dir" and entry["outcome"] == "success"


async def test_finished_job_is_listed_after_a_restart(appliance: AppFactory,
                                                     make_bundle: MakeBundle,
                                                     data_dir: Path, tmp_path: Path) -> None:
    first: Any = await appliance({"auth": {"required": False}})
    tar = tmp_path / "b.tar"
    _tar(make_bundle(), tar)
    resp = await first.post("/api/bundles?filename=b.tar", data=tar.read_bytes())
    job = await _wait(first, (await resp.json())["id"])
    assert job["state"] == "success", job
    await first.close()

    second: Any = await appliance({"auth": {"required": False}})  # same data directory
    [listed] = await (await second.get("/api/bundles/imports")).json()
    assert listed["id"] == job["id"] and listed["state"] == "success"
    assert listed["source"] == "upload:b.tar" and listed["origin"] == "upload"
    assert listed["result"] == job["result"] and listed["percent"] == 100.0
    assert listed["bytes_done"] == listed["bytes_total"] == job["bytes_total"] > 0
    assert listed["started_at"] == job["started_at"]
    assert listed["finished_at"] == job["finished_at"]
    assert await (await second.get(f"/api/bundles/imports/{job['id']}")).json() == listed


async def test_job_stopped_by_a_shutdown_shows_as_interrupted(
        appliance: AppFactory, make_bundle: MakeBundle, tmp_path: Path, monkeypatch: Any
) -> None:
    started, release = threading.Event(), threading.Event()

    def stuck_import(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(30)
        raise RuntimeError("released after the server stopped")

    monkeypatch.setattr("appliance.bundle.jobs.import_bundle", stuck_import)
    first: Any = await appliance({"auth": {"required": False}})
    tar = tmp_path / "b.tar"
    _tar(make_bundle(), tar)
    try:
        resp = await first.post("/api/bundles", data=tar.read_bytes())
        job_id = (await resp.json())["id"]
        assert await asyncio.to_thread(started.wait, 10)
        [running] = await (await first.get("/api/bundles/imports")).json()
        assert running["id"] == job_id and running["state"] == "running"
        await first.close()  # the server stops in the middle of the import
    finally:
        release.set()

    second: Any = await appliance({"auth": {"required": False}})
    [listed] = await (await second.get("/api/bundles/imports")).json()
    assert listed["id"] == job_id and listed["state"] == "error", listed
    assert listed["error"] == "interrupted by a restart; import it again (imports resume)"
    assert listed["error_code"] == "interrupted" and listed["finished_at"] is not None
    job = await (await second.get(f"/api/bundles/imports/{job_id}")).json()
    assert job["state"] == "error" and job["error_code"] == "interrupted"
