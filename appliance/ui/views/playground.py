"""Playground: chat with any routed model, tokens streamed as they arrive."""

from __future__ import annotations

from typing import Any

from appliance.ui.pages import Page, PageRequest


async def playground(req: PageRequest) -> dict[str, Any]:
    """Chat models first; embedding-only engines are left out."""
    s = req.services
    embedding = {n for n, e in s.supervisor.engines.items() if e.spec.task == "embedding"}
    chat = [m for m in s.router.models() if m not in embedding]
    host = req.request.host
    return {"models": chat, "chosen": req.query.get("model", chat[0] if chat else ""),
            "base_url": f"{req.request.scheme}://{host}/v1"}


PAGES = (Page("/playground", "Playground", "playground.html", playground, section="Serve",
              summary="Try a model: streamed answer, time to first token, tokens per second."),)
