"""Parsers that turn command output on a host into facts, and the map onto the GPU catalog.

Each parser takes the command's stdout and a ``ParseContext`` and returns a dict merged into
the host's facts. Playbook steps name them with ``facts: NAME``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec


class ParseContext(msgspec.Struct, frozen=True, kw_only=True):
    sent_at: float  # appliance clock when the command was sent
    received_at: float  # ... and when its output came back


Parser = Callable[[str, ParseContext], dict[str, Any]]
PARSERS: dict[str, Parser] = {}


def parser(name: str) -> Callable[[Parser], Parser]:
    def register(fn: Parser) -> Parser:
        PARSERS[name] = fn
        return fn
    return register


def sections(text: str) -> dict[str, str]:
    """``== name`` headed blocks of a gather script's output."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            out.setdefault(current, [])
        elif current:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def _kv(text: str, sep: str = "=") -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if sep in line:
            k, _, v = line.partition(sep)
            out[k.strip()] = v.strip().strip('"')
    return out


def meminfo_kib(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def listening_ports(text: str) -> list[int]:
    """Ports in LISTEN state from /proc/net/tcp and tcp6 lines."""
    ports = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 3 and ":" in parts[1] and parts[3] == "0A":
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


@parser("preflight")
def parse_preflight(text: str, ctx: ParseContext) -> dict[str, Any]:
    s = sections(text)
    os_release = _kv(s.get("os", ""))
    mem = meminfo_kib(s.get("memory", ""))
    disk: dict[str, int] = {}
    for line in s.get("disk", "").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[3].isdigit():
            disk[parts[5]] = int(parts[3]) // 1024  # available MiB
    init = s.get("init", "").split()
    runtime = [line.split()[0] for line in s.get("runtime", "").splitlines() if line.strip()]
    hostname = s.get("hostname", "").split()
    resolve = s.get("resolve", "")
    return {"preflight": {
        "os": os_release.get("PRETTY_NAME", "unknown"),
        "os_id": os_release.get("ID", ""), "os_version": os_release.get("VERSION_ID", ""),
        "kernel": s.get("kernel", ""),
        "hostname": hostname[0] if hostname else "",
        "hostname_resolves": bool(resolve) and "unresolved" not in resolve,
        "cpus": int(s.get("cpu", "0").split()[0] or 0) if s.get("cpu") else 0,
        "memory_mib": mem.get("MemTotal", 0) // 1024,
        "memory_available_mib": mem.get("MemAvailable", 0) // 1024,
        "swap_mib": mem.get("SwapTotal", 0) // 1024,
        "disk_free_mib": disk,
        "listening_ports": listening_ports(s.get("ports", "")),
        "init": init[0] if init else "unknown",
        "systemd": "systemd-running" in init,
        "container_runtimes": runtime,
    }}


@parser("clock")
def parse_clock(text: str, ctx: ParseContext) -> dict[str, Any]:
    """``date +%s.%N`` alone: the host's clock against the midpoint of the round trip."""
    try:
        remote = float(text.split()[0])
    except (IndexError, ValueError):
        return {"clock": {"skew_s": None, "uncertainty_s": None}}
    midpoint = (ctx.sent_at + ctx.received_at) / 2
    return {"clock": {"skew_s": round(remote - midpoint, 3),
                      "uncertainty_s": round((ctx.received_at - ctx.sent_at) / 2, 3)}}


# --- accelerators -----------------------------------------------------------------------------

# PCI vendor:device → simulator catalog id (appliance.sim.default_catalog()).
PCI_IDS: dict[str, str] = {
    "10de:2330": "h100-sxm", "10de:2324": "h100-sxm", "10de:2331": "h100-pcie",
    "10de:2321": "h100-pcie", "10de:2335": "h200", "10de:233b": "h200", "10de:2342": "gh200",
    "10de:20b2": "a100-80g", "10de:20b5": "a100-80g", "10de:20b0": "a100-40g",
    "10de:20f1": "a100-40g", "10de:26b9": "l40s", "10de:27b8": "l4", "10de:1eb8": "t4",
    "10de:2237": "a10g", "1002:740c": "mi250", "1002:740f": "mi250", "1002:74a1": "mi300x",
    "1da3:1020": "gaudi2",
}
VENDORS = {"10de": "nvidia", "1002": "amd", "1da3": "intel"}

# Product names as nvidia-smi/amd-smi/hl-smi print them, most specific first.
_NAME_MAP: list[tuple[str, str]] = [
    (r"GH200", "gh200"), (r"H200", "h200"),
    (r"H100.*(PCIe|NVL)", "h100-pcie"), (r"H100", "h100-sxm"),
    (r"A100.*80\s?GB", "a100-80g"), (r"A100", "a100-40g"),
    (r"L40S", "l40s"), (r"\bL4\b", "l4"), (r"\bT4\b", "t4"), (r"A10G", "a10g"),
    (r"MI300X", "mi300x"), (r"MI250", "mi250"), (r"Gaudi\s?2|HL-225", "gaudi2"),
]
# Accelerator PCI classes: VGA, 3D controller, display, processing accelerators.
_ACCEL_CLASSES = ("0300", "0302", "0380", "1200")


def catalog_id(name: str, pci_id: str = "") -> str | None:
    """The simulator catalog id of an accelerator named ``name`` (or with ``pci_id``)."""
    if pci_id.lower() in PCI_IDS:
        return PCI_IDS[pci_id.lower()]
    for pattern, gid in _NAME_MAP:
        if re.search(pattern, name, re.IGNORECASE):
            return gid
    return None


@parser("nvidia_smi")
def parse_nvidia_smi(text: str, ctx: ParseContext) -> dict[str, Any]:
    """``nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,
    compute_cap --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        mem = int(float(parts[4])) if re.match(r"^[\d.]+$", parts[4]) else None
        gpus.append({"index": int(parts[0]), "vendor": "nvidia", "name": parts[1],
                     "uuid": parts[2], "pci_bus_id": parts[3].lower(), "memory_mib": mem,
                     "driver": parts[5] if len(parts) > 5 else "",
                     "compute_capability": parts[6] if len(parts) > 6 else "",
                     "catalog_id": catalog_id(parts[1]), "source": "nvidia-smi"})
    return {"nvidia_smi": gpus} if gpus else {"nvidia_smi": []}


_LSPCI = re.compile(
    r"^(?P<slot>\S+)\s+(?P<cls_name>[^\[]+?)\s*\[(?P<cls>[0-9a-f]{4})\]:\s+"
    r"(?P<desc>.*?)\s*\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\]"
    r"(?:\s*\(rev [0-9a-f]+\))?\s*$", re.IGNORECASE)


@parser("lspci")
def parse_lspci(text: str, ctx: ParseContext) -> dict[str, Any]:
    """``lspci -nn -D``: accelerators of NVIDIA, AMD and Intel Gaudi (Habana), by PCI id."""
    devices = []
    for line in text.splitlines():
        m = _LSPCI.match(line.strip())
        if not m:
            continue
        vendor, cls = m["vendor"].lower(), m["cls"].lower()
        if vendor not in VENDORS or cls not in _ACCEL_CLASSES:
            continue
        if vendor == "1002" and cls != "1200" and "Instinct" not in m["desc"]:
            continue  # an AMD display adapter, not an accelerator
        pci_id = f"{vendor}:{m['device'].lower()}"
        devices.append({"slot": m["slot"].lower(), "vendor": VENDORS[vendor],
                        "name": m["desc"].strip(), "pci_id": pci_id,
                        "catalog_id": catalog_id(m["desc"], pci_id)})
    return {"pci_accelerators": devices}


@parser("lscpu")
def parse_lscpu(text: str, ctx: ParseContext) -> dict[str, Any]:
    kv = _kv(text, ":")
    flags = set(kv.get("Flags", "").split())

    def num(key: str) -> int:
        value = kv.get(key, "0").split()[0] if kv.get(key) else "0"
        return int(value) if value.isdigit() else 0

    numa = {k[5:].replace(" CPU(s)", "").strip(): v for k, v in kv.items()
            if k.startswith("NUMA node") and k.endswith("CPU(s)")}
    return {"cpu": {
        "model": kv.get("Model name", ""), "architecture": kv.get("Architecture", ""),
        "cpus": num("CPU(s)"), "sockets": num("Socket(s)"),
        "cores_per_socket": num("Core(s) per socket"),
        "threads_per_core": num("Thread(s) per core"),
        "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags, "avx512_vnni": "avx512_vnni" in flags,
        "amx": bool({"amx_tile", "amx_bf16", "amx_int8"} & flags),
        "amx_bf16": "amx_bf16" in flags,
    }, "numa": {"nodes": num("NUMA node(s)") or max(1, len(numa)), "cpus": numa}}


@parser("meminfo")
def parse_meminfo(text: str, ctx: ParseContext) -> dict[str, Any]:
    mem = meminfo_kib(text)
    return {"memory": {"total_mib": mem.get("MemTotal", 0) // 1024,
                       "available_mib": mem.get("MemAvailable", 0) // 1024,
                       "swap_mib": mem.get("SwapTotal", 0) // 1024,
                       "hugepages_total": mem.get("HugePages_Total", 0)}}


@parser("nics")
def parse_nics(text: str, ctx: ParseContext) -> dict[str, Any]:
    """``== addr`` (``ip -j addr``) and ``== speed`` (``name speed mac state`` lines)."""
    s = sections(text)
    speeds: dict[str, dict[str, Any]] = {}
    for line in s.get("speed", "").splitlines():
        parts = line.split()
        if len(parts) >= 4:
            speed = int(parts[1]) if parts[1].lstrip("-").isdigit() else None
            speeds[parts[0]] = {"speed_mbps": speed if speed and speed > 0 else None,
                                "mac": parts[2], "state": parts[3]}
    nics = []
    try:
        addrs = json.loads(s.get("addr") or "[]")
    except ValueError:
        addrs = []
    for entry in addrs:
        name = entry.get("ifname", "")
        if name == "lo":
            continue
        nics.append({"name": name, **speeds.get(name, {}),
                     "addresses": [f"{a['local']}/{a['prefixlen']}"
                                   for a in entry.get("addr_info", []) if "local" in a],
                     "rdma": name.startswith(("ib", "mlx"))})
    return {"nics": nics}


@parser("disks")
def parse_disks(text: str, ctx: ParseContext) -> dict[str, Any]:
    """``lsblk -J -b -d -o NAME,SIZE,ROTA,TYPE,MODEL,TRAN``."""
    try:
        devices = json.loads(text or "{}").get("blockdevices", [])
    except ValueError:
        devices = []
    disks = []
    for d in devices:
        if d.get("type") != "disk":
            continue
        rota = d.get("rota")
        disks.append({"name": d.get("name"), "size_gib": round(int(d.get("size") or 0) / 2**30, 1),
                      "rotational": rota in (True, "1", 1), "model": (d.get("model") or "").strip(),
                      "transport": d.get("tran") or ""})
    return {"disks": disks}


def summarize(facts: dict[str, Any]) -> dict[str, Any]:
    """Derived facts: ``gpus`` (nvidia-smi first, else lspci) and ``accelerator``."""
    smi = facts.get("nvidia_smi") or []
    pci = facts.get("pci_accelerators") or []
    gpus = list(smi) + [d for d in pci if d["vendor"] != "nvidia" or not smi]
    out: dict[str, Any] = {"gpus": gpus}
    if not gpus:
        out["accelerator"] = None
        return out
    counts: dict[str, int] = {}
    for g in gpus:
        key = g.get("catalog_id") or g.get("name", "unknown")
        counts[key] = counts.get(key, 0) + 1
    main = max(counts, key=lambda k: counts[k])
    first = next(g for g in gpus if (g.get("catalog_id") or g.get("name")) == main)
    notes = []
    if pci and not smi and any(d["vendor"] == "nvidia" for d in pci):
        notes.append("NVIDIA devices on the PCI bus but nvidia-smi gave nothing: "
                     "the driver is missing or not loaded")
    out["accelerator"] = {"vendor": first.get("vendor"), "name": first.get("name"),
                          "catalog_id": first.get("catalog_id"), "count": counts[main],
                          "memory_mib": first.get("memory_mib"), "notes": notes}
    return out


def node_labels(facts: dict[str, Any]) -> dict[str, str]:
    """Kubernetes node labels from facts (NFD/GPU-operator style names)."""
    labels: dict[str, str] = {}
    acc = facts.get("accelerator") or None
    if acc:
        vendor = acc.get("vendor") or "unknown"
        domain = {"nvidia": "nvidia.com", "amd": "amd.com", "intel": "habana.ai"}.get(
            vendor, "accelerator.foundry")
        labels[f"{domain}/gpu.present"] = "true"
        labels[f"{domain}/gpu.count"] = str(acc.get("count") or 0)
        if acc.get("name"):
            labels[f"{domain}/gpu.product"] = re.sub(r"[^A-Za-z0-9_.-]+", "-",
                                                     str(acc["name"]))[:63].strip("-._")
        if acc.get("catalog_id"):
            labels["foundry.appliance/gpu"] = str(acc["catalog_id"])
    cpu = facts.get("cpu") or {}
    for flag, label in (("avx512", "cpu-cpuid.AVX512F"), ("amx", "cpu-cpuid.AMXTILE")):
        if cpu.get(flag):
            labels[f"feature.node.kubernetes.io/{label}"] = "true"
    return labels
