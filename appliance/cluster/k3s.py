"""Variables of the k3s playbooks: files from a bundle, the registry, labels, join token."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Any

from appliance.cluster import inventory
from appliance.cluster.facts import node_labels
from appliance.kernel.errors import BadRequest
from appliance.settings import Settings
from appliance.store.state import StateStore

# Registries whose pulls containerd sends to the appliance instead.
MIRRORED_REGISTRIES = ["docker.io", "registry.k8s.io", "ghcr.io", "quay.io", "nvcr.io"]
IMAGE_SUFFIXES = (".tar", ".tar.gz", ".tar.zst", ".tgz")


def bundle_files(directory: Path) -> dict[str, Any]:
    """The k3s binary and image tarballs in a bundle's file directory."""
    if not directory.is_dir():
        raise BadRequest(f"k3s bundle directory {directory} does not exist", param="bundle")
    binary = directory / "k3s"
    if not binary.is_file():
        raise BadRequest(f"{directory} has no k3s binary (expected {binary})", param="bundle")
    images = sorted(p for p in directory.iterdir()
                    if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
    return {"binary": str(binary),
            "images": [{"src": str(p), "name": p.name} for p in images]}


def registry_address(settings: Settings) -> str:
    """host:port where nodes reach the appliance's /v2/ registry."""
    url = settings.cluster.advertise_url or f"http://{settings.listen}"
    return url.split("://", 1)[-1].split("/", 1)[0]


async def k3s_vars(store: StateStore, settings: Settings, playbook: str, hosts: list[str], *,
                   bundle: str | None, server: str | None = None,
                   token: str | None = None) -> dict[str, Any]:
    """Variables for k3s-server / k3s-agent (``reset`` needs none).

    Node labels are per host; they are passed as ``node_labels_by_host`` and picked per host
    by the caller through ``host_vars`` (see ``host_vars_for``).
    """
    if playbook == "reset":
        return {}
    if not bundle:
        raise BadRequest(f"{playbook} needs --bundle DIR (the k3s files of a bundle)",
                         param="bundle")
    files = await asyncio.to_thread(lambda: bundle_files(Path(bundle).expanduser()))
    out: dict[str, Any] = {"k3s": files,
                           "registry": registry_address(settings),
                           "mirrors": MIRRORED_REGISTRIES, "node_labels": {}}
    if playbook == "k3s-agent":
        if not server:
            raise BadRequest("k3s-agent needs server=HOST (a k3s server in the inventory)",
                             param="server")
        srv = await inventory.get_host(store, server)
        out["server_url"] = f"https://{srv.address}:6443"
        if token is not None:
            out["token"] = token
    return out


async def host_vars_for(store: StateStore, hosts: list[str]) -> dict[str, dict[str, Any]]:
    """Per-host variables: node labels from each host's detected facts and its labels."""
    out = {}
    for name in hosts:
        host = await inventory.get_host(store, name)
        labels = {**node_labels(host.facts), **host.labels,
                  "foundry.appliance/role": host.role}
        out[name] = {"node_labels": labels}
    return out


def read_token_command(data_dir: str = "/var/lib/rancher/k3s") -> str:
    return f"cat {shlex.quote(data_dir + '/server/node-token')}"
