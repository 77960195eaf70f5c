"""Audit: the filterable trail of changes and a check of its hash chain."""

from __future__ import annotations

import time
from typing import Any

from appliance.ui.pages import Page, PageRequest

PERIODS = {"1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": 0}
LIMIT = 2000


async def audit(req: PageRequest) -> dict[str, Any]:
    """The newest entries matching actor, action and period (the table filters further)."""
    q = req.query
    actor, action = q.get("actor", "").strip(), q.get("action", "").strip()
    period = q.get("period", "7d") if q.get("period") in PERIODS else "7d"
    where: list[str] = ["1=1"]
    args: list[Any] = []
    if actor:
        where.append("actor LIKE ?")
        args.append(f"%{actor}%")
    if action:
        where.append("action LIKE ?")
        args.append(f"{action}%")
    if PERIODS[period]:
        where.append("at >= ?")
        args.append(time.time() - PERIODS[period])
    rows = await req.services.store.fetchall(
        f"SELECT * FROM audit_log WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT {LIMIT}",
        tuple(args))
    entries = [dict(r) for r in rows]
    actions = sorted({str(r["action"]).split(".")[0] for r in await req.services.store.fetchall(
        "SELECT DISTINCT action FROM audit_log")})
    return {"entries": entries, "actor": actor, "action": action, "period": period,
            "periods": list(PERIODS), "actions": actions, "limit": LIMIT,
            "chained": bool(entries) and "hash" in entries[0]}


PAGES = (Page("/audit", "Audit", "audit.html", audit, section="Access", admin=True,
              summary="Every change: who, what, when, from where; tamper-evident."),)
