"""HTTP surface of bundle imports: streaming upload, import jobs and their progress.

``POST /api/bundles`` takes a tar of a bundle as the request body (streamed to the data
directory, never held in memory, so ``server.max_body_bytes`` does not apply) and answers 202
with a job (``?filename=`` names the file it came from; ``?allow_unsigned=1`` as for imports);
``GET /api/bundles/imports`` and ``GET /api/bundles/imports/{id}`` report state, bytes,
percent, rate and ETA. These live under ``/api`` and need ``bundles.import``, like imports from
a path.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Protocol

import msgspec
from aiohttp import web

from appliance.bundle.jobs import ImportJobs
from appliance.content.store import NoSpace
from appliance.identity.http import principal_of, source_address
from appliance.kernel.errors import BadRequest, NotFound
from appliance.settings import Settings
from appliance.store.state import StateStore

UPLOAD_CHUNK = 1024 * 1024
_encode = msgspec.json.Encoder().encode


class BundleServices(Protocol):
    settings: Settings
    data_dir: Path
    store: StateStore

    async def reload(self) -> None: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(data), content_type="application/json")


def upload_source(filename: str) -> str:
    """What an upload is recorded as coming from (its temporary copy is gone afterwards)."""
    name = "".join(c for c in filename.replace("\\", "/").rsplit("/", 1)[-1]
                   if c.isprintable())[:200].strip()
    return f"upload:{name}" if name else "upload"


class BundleViews:
    def __init__(self, jobs: ImportJobs, data_dir: Path) -> None:
        self.jobs = jobs
        self.uploads = data_dir / "uploads"

    async def upload(self, request: web.Request) -> web.Response:
        """Upload a tar of a bundle (streamed); the import runs as a job."""
        allow_unsigned = request.query.get("allow_unsigned", "") in ("1", "true", "yes")
        source = upload_source(request.query.get("filename", ""))
        await asyncio.to_thread(self.uploads.mkdir, parents=True, exist_ok=True)
        length = request.content_length
        if length is not None:
            free = (await asyncio.to_thread(shutil.disk_usage, self.uploads)).free
            # the upload and the imported blobs both need room
            if 2 * length > free:
                raise NoSpace(f"the upload needs about {2 * length / 1e6:.1f} MB but the data "
                              f"directory has {free / 1e6:.1f} MB free")
        target = self.uploads / f"upl_{uuid.uuid4().hex[:12]}.tar"
        partial = target.with_suffix(".partial")
        f: IO[bytes] = await asyncio.to_thread(partial.open, "wb")
        received = 0
        try:
            async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
                received += len(chunk)
                await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(f.close)
            if length is not None and received != length:
                raise BadRequest(f"the upload ended after {received} of {length} bytes")
            if received == 0:
                raise BadRequest("the request body is empty: send a tar of a bundle")
            await asyncio.to_thread(partial.rename, target)
        except BaseException:
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        job = self.jobs.start(target, origin="upload", allow_unsigned=allow_unsigned,
                              cleanup=target, source=source,
                              actor=principal_of(request).name,
                              source_address=source_address(request))
        return _json({"id": job.id, "state": job.state, "bytes_received": received,
                      "status_url": f"/api/bundles/imports/{job.id}"}, status=202)

    async def list_jobs(self, request: web.Request) -> web.Response:
        """The newest 100 import jobs (uploads, watch directories), earlier runs' too, newest
        last."""
        return _json(await self.jobs.list_jobs())

    async def job(self, request: web.Request) -> web.Response:
        """One import job: state, bytes done and total, percent, rate, ETA, result or error."""
        job = await self.jobs.get(request.match_info["id"])
        if job is None:
            raise NotFound(f"no import job {request.match_info['id']!r}")
        return _json(job)


def add_routes(app: web.Application, services: BundleServices) -> ImportJobs:
    """Register the bundle upload and job routes, and the jobs' cleanup context."""
    jobs = ImportJobs(services.data_dir, on_imported=services.reload,
                      watch_dirs=services.settings.bundle.watch_dirs,
                      watch_interval_s=services.settings.bundle.watch_interval_s,
                      store=services.store)
    views = BundleViews(jobs, services.data_dir)
    app.router.add_post("/api/bundles", views.upload)
    app.router.add_get("/api/bundles/imports", views.list_jobs)
    app.router.add_get("/api/bundles/imports/{id}", views.job)
    app.cleanup_ctx.append(jobs.ctx)
    return jobs
