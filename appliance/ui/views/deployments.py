"""Deployments: a model on a host or a cluster, from the simulator's proposal to serving.

The page lists deployments and offers the flow of ``/api/deployments``: pick a model and a
target → the simulator's proposal → confirm → progress (``/api/installs/{id}/events`` for
host targets, the deployment's state for both) until its route serves.
"""

from __future__ import annotations

from typing import Any

from appliance.cluster import inventory
from appliance.cluster.kube import list_clusters
from appliance.models.registry import list_models
from appliance.ui.pages import Page, PageRequest, can


async def deployments(req: PageRequest) -> dict[str, Any]:
    """Deployments (deleted ones on request) and the choices of the form."""
    from appliance.cluster.http import CLUSTER_VIEWS

    if not can(req.operator, "deployments.read"):
        return {"allowed": False, "can_write": False}
    store = req.services.store
    views = req.request.app.get(CLUSTER_VIEWS)
    found = (await views.deployments.list()
             if views is not None and views.deployments is not None else [])
    show_deleted = req.query.get("deleted") == "1"
    shown = [d for d in found if show_deleted or d.status != "deleted"]
    hosts = await inventory.list_hosts(store) if can(req.operator, "hosts.read") else []
    try:
        from appliance.sim.hardware import default_catalog

        gpu_ids = default_catalog().ids()
    except ImportError:  # pragma: no cover - simulator not built in
        gpu_ids = []
    return {"allowed": True, "can_write": can(req.operator, "deployments.write"),
            "deployments": shown, "hidden": len(found) - len(shown),
            "show_deleted": show_deleted,
            "models": sorted({m.name for m in await list_models(store, active_only=True)}),
            "hosts": [{"name": h.name, "address": h.address,
                       "accelerator": h.facts.get("accelerator")} for h in hosts],
            "clusters": await list_clusters(store), "gpu_ids": gpu_ids}


PAGES = (Page("/deployments", "Deployments", "deployments.html", deployments,
              section="Infrastructure", permission="deployments.read",
              summary="Serve a model on a host or a cluster: the simulator proposes, you "
                      "confirm, the gateway routes."),)
