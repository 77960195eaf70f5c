"""`appliance clusters`: Kubernetes clusters the appliance deploys models onto."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import add_common, fail, print_json, print_table, run_with_store
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("clusters", help="manage Kubernetes clusters",
                       description="Kubernetes clusters: registered by kubeconfig (stored "
                       "encrypted) or from a k3s server host the appliance installed.")
    cs = p.add_subparsers(dest="clusters_command", metavar="ACTION", required=True)

    add = cs.add_parser("add", help="register a cluster",
                        description="Register a cluster by kubeconfig, or --from-k3s HOST "
                        "to read the kubeconfig of a k3s server in the inventory.")
    add_common(add)
    add.add_argument("name")
    add.add_argument("--kubeconfig", type=Path, metavar="FILE")
    add.add_argument("--from-k3s", metavar="HOST", help="a k3s server host in the inventory")
    add.add_argument("--namespace", default="default", help="namespace for deployments")
    add.set_defaults(func=add_cluster)

    ls = cs.add_parser("list", help="list clusters", description="List clusters.")
    add_common(ls)
    ls.set_defaults(func=list_clusters)

    rm = cs.add_parser("remove", help="forget a cluster", description="Forget a cluster "
                       "(nothing on the cluster is deleted).")
    add_common(rm)
    rm.add_argument("name")
    rm.set_defaults(func=remove_cluster)

    nodes = cs.add_parser("nodes", help="list a cluster's nodes with GPU labels",
                          description="Nodes, their GPU capacity and labels.")
    add_common(nodes)
    nodes.add_argument("name")
    nodes.set_defaults(func=list_nodes)


def add_cluster(args: argparse.Namespace) -> int:
    if bool(args.kubeconfig) == bool(args.from_k3s):
        return fail("give --kubeconfig FILE or --from-k3s HOST", 2)

    async def body(store: StateStore, settings: Settings) -> int:
        from appliance.cluster.kube import ClusterService

        clusters = ClusterService(store, settings.data_path)
        if args.kubeconfig:
            rec = await clusters.add_cluster(args.name, args.kubeconfig.read_text(),
                                             namespace=args.namespace)
        else:
            from appliance.cluster import HostService

            hosts = HostService(store, settings.data_path, settings.cluster)
            try:
                rec = await clusters.add_from_k3s(args.name, hosts, args.from_k3s,
                                                  namespace=args.namespace)
            finally:
                await hosts.close()
        if args.json:
            print_json(rec)
        else:
            print(f"cluster {rec.name} ({rec.server}, Kubernetes {rec.version}, "
                  f"{rec.nodes} nodes) registered")
        return 0

    return run_with_store(args, body)


def list_clusters(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        from appliance.cluster.kube import list_clusters as list_all

        found = await list_all(store)
        if args.json:
            print_json(found)
        else:
            print_table(["name", "server", "namespace", "source"],
                        [(c.name, c.server, c.namespace, c.source) for c in found])
        return 0

    return run_with_store(args, body)


def remove_cluster(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        from appliance.cluster.kube import remove_cluster as remove

        await remove(store, args.name)
        print_json({"removed": args.name}) if args.json else print(f"cluster {args.name} removed")
        return 0

    return run_with_store(args, body)


def list_nodes(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        from appliance.cluster.kube import ClusterService

        nodes = await ClusterService(store, settings.data_path).nodes(args.name)
        if args.json:
            print_json(nodes)
        else:
            print_table(["node", "ready", "gpus", "gpu", "labels"], [
                (n.name, n.ready, n.gpus, n.gpu_catalog_id or "-",
                 ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())
                          if "gpu" in k or "feature.node" in k)[:80]) for n in nodes])
        return 0

    return run_with_store(args, body)
