"""Bundles: what was imported, an import from a path on this host with live progress.

The page's other way in, an upload from the browser's computer, needs nothing here: the
browser streams the tar through the door to ``POST /api/bundles`` and polls the import job.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from appliance.bundle.importer import import_bundle
from appliance.bundle.jobs import audit_import
from appliance.kernel.errors import ApplianceError
from appliance.ui.pages import CONSOLE, Page, PageRequest, can
from appliance.ui.proxy import json_error, operator_for_call


class ImportForm(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    allow_unsigned: bool = False


async def bundles(req: PageRequest) -> dict[str, Any]:
    """Imported bundles, newest first, with the models each brought."""
    store = req.services.store
    rows = [dict(r) for r in await store.fetchall("SELECT * FROM bundles ORDER BY imported_at"
                                                  " DESC")]
    models: dict[str, list[str]] = {}
    for r in await store.fetchall("SELECT bundle_id, name, version FROM models"):
        models.setdefault(r["bundle_id"] or "", []).append(f"{r['name']} {r['version']}")
    return {"bundles": rows, "models": models}


async def import_stream(request: web.Request) -> web.StreamResponse:
    """Import a bundle directory or tar on this host; progress as server-sent events."""
    operator = await operator_for_call(request)
    if isinstance(operator, web.Response):
        return operator
    if not can(operator, "bundles.import"):  # as POST /api/bundles/import requires
        return json_error(403, "permission_denied", "your role does not grant bundles.import")
    services = request.app[CONSOLE].services
    try:
        form = msgspec.json.decode(await request.read(), type=ImportForm)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return web.json_response({"error": {"code": "invalid", "message": str(exc)}},
                                 status=400)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    started = time.monotonic()

    def progress(done: int, total: int) -> None:  # called in the import thread
        loop.call_soon_threadsafe(queue.put_nowait, (done, total))

    async def send(event: str, data: Any) -> None:
        await response.write(f"event: {event}\ndata: ".encode() + msgspec.json.encode(data)
                             + b"\n\n")

    job = asyncio.ensure_future(asyncio.to_thread(
        import_bundle, services.data_dir, Path(form.path), progress=progress,
        allow_unsigned=form.allow_unsigned))
    last = 0.0
    while not job.done():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            done, total = getter.result()
            if time.monotonic() - last > 0.2 or done == total:
                last = time.monotonic()
                elapsed = last - started
                rate = done / elapsed if elapsed > 0 else 0
                await send("progress", {"done": done, "total": total, "rate": rate,
                                        "eta_s": (total - done) / rate if rate else None})
        else:
            getter.cancel()
    who = functools.partial(audit_import, services.store, actor=operator.actor,
                            source=form.path, source_address=request.remote or "")
    try:
        result = job.result()
    except (ApplianceError, OSError, ValueError) as exc:
        message = getattr(exc, "message", str(exc))
        await who(error=message)
        await send("failed", {"message": message})
    else:
        await who(result=result)
        await services.reload()
        await send("done", msgspec.to_builtins(result))
    await response.write_eof()
    return response


PAGES = (Page("/bundles", "Bundles", "bundles.html", bundles, section="Content",
              summary="Offline bundles: models and images carried in on USB."),)
ROUTES = (("POST", "/ui/bundles/import", import_stream),)
