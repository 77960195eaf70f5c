"""The model registry as the server sees it: imported models and what engines they need."""

from __future__ import annotations

import msgspec

from appliance.content.store import BlobStore
from appliance.engines.supervisor import EngineSpec
from appliance.settings import EngineSettings
from appliance.store.state import StateStore

SERVABLE_FORMATS = {"gguf": "chat", "bert-safetensors": "embedding"}


class ModelRecord(msgspec.Struct, kw_only=True):
    id: str
    name: str
    version: str
    task: str
    format: str
    files: dict[str, str]
    size: int
    active: bool
    created_at: float
    bundle_id: str | None


async def list_models(store: StateStore, *, active_only: bool = False) -> list[ModelRecord]:
    where = " WHERE active=1" if active_only else ""
    rows = await store.fetchall(
        "SELECT id, name, version, task, format, files, size, active, created_at, bundle_id"
        f" FROM models{where} ORDER BY name, created_at")
    return [ModelRecord(id=r["id"], name=r["name"], version=r["version"], task=r["task"],
                        format=r["format"], files=msgspec.json.decode(r["files"]),
                        size=r["size"], active=bool(r["active"]), created_at=r["created_at"],
                        bundle_id=r["bundle_id"]) for r in rows]


def engine_spec(model: ModelRecord, blobs: BlobStore,
                settings: EngineSettings) -> EngineSpec | None:
    """How to serve ``model`` with the embedded engine, or None when it cannot."""
    if model.format not in SERVABLE_FORMATS:
        return None
    return EngineSpec(
        name=model.name, task=model.task,
        files={rel: str(blobs.path(digest)) for rel, digest in model.files.items()},
        threads=settings.threads, context_tokens=settings.context_tokens,
        max_queue=settings.max_queue)
