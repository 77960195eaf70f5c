"""GPU catalog: memory, bandwidth, dense TFLOPS per dtype, interconnect and a typical price.

Figures are vendors' published dense (no sparsity) numbers; prices are typical on-demand cloud
rates in USD per GPU-hour, only good for comparing configurations. A site extends or overrides
the catalog with its own entries (``GpuCatalog.with_entries``), e.g. from detected hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from appliance.sim.errors import SimInputError

DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")

#: Bytes per weight as stored, including quantization scales for the integer formats.
WEIGHT_BYTES: Mapping[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.03,
    "int4": 0.56,
}


class GpuSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One accelerator model."""

    id: str
    name: str
    vendor: str
    memory_gib: float
    bandwidth_gbs: float
    #: Dense TFLOPS by compute dtype; a dtype missing here falls back to fp16 compute.
    tflops: dict[str, float]
    interconnect: str
    #: Per-GPU bidirectional bandwidth to its peers for collectives, GB/s.
    interconnect_gbs: float
    price_per_hour: float
    #: Typical largest tensor-parallel group inside one host.
    max_per_node: int = 8

    def peak_tflops(self, dtype: str) -> float:
        """Dense peak for matrix multiplies run in ``dtype`` (weight-only formats use fp16)."""
        if dtype in self.tflops:
            return self.tflops[dtype]
        if dtype in ("int4", "int8", "fp8"):
            return self.tflops.get("fp16", self.tflops.get("bf16", 1.0))
        return self.tflops.get("bf16", self.tflops.get("fp16", 1.0))


def _gpu(
    gid: str,
    name: str,
    vendor: str,
    mem: float,
    bw: float,
    fp16: float,
    *,
    fp32: float,
    fp8: float = 0.0,
    int8: float = 0.0,
    link: str,
    link_gbs: float,
    price: float,
    per_node: int = 8,
) -> GpuSpec:
    tflops = {"fp32": fp32, "fp16": fp16, "bf16": fp16}
    if fp8:
        tflops["fp8"] = fp8
    if int8:
        tflops["int8"] = int8
    return GpuSpec(
        id=gid,
        name=name,
        vendor=vendor,
        memory_gib=mem,
        bandwidth_gbs=bw,
        tflops=tflops,
        interconnect=link,
        interconnect_gbs=link_gbs,
        price_per_hour=price,
        max_per_node=per_node,
    )


_BUILTIN: tuple[GpuSpec, ...] = (
    _gpu(
        "a100-40g",
        "NVIDIA A100 SXM 40GB",
        "nvidia",
        40.0,
        1555,
        312,
        fp32=19.5,
        int8=624,
        link="NVLink3",
        link_gbs=600,
        price=1.30,
    ),
    _gpu(
        "a100-80g",
        "NVIDIA A100 SXM 80GB",
        "nvidia",
        80.0,
        2039,
        312,
        fp32=19.5,
        int8=624,
        link="NVLink3",
        link_gbs=600,
        price=1.80,
    ),
    _gpu(
        "h100-sxm",
        "NVIDIA H100 SXM 80GB",
        "nvidia",
        79.6,
        3350,
        989,
        fp32=67,
        fp8=1979,
        int8=1979,
        link="NVLink4",
        link_gbs=900,
        price=3.00,
    ),
    _gpu(
        "h100-pcie",
        "NVIDIA H100 PCIe 80GB",
        "nvidia",
        79.6,
        2000,
        756,
        fp32=51,
        fp8=1513,
        int8=1513,
        link="PCIe5",
        link_gbs=128,
        price=2.40,
    ),
    _gpu(
        "h200",
        "NVIDIA H200 SXM 141GB",
        "nvidia",
        140.4,
        4800,
        989,
        fp32=67,
        fp8=1979,
        int8=1979,
        link="NVLink4",
        link_gbs=900,
        price=3.80,
    ),
    _gpu(
        "gh200",
        "NVIDIA GH200 96GB",
        "nvidia",
        95.6,
        4000,
        989,
        fp32=67,
        fp8=1979,
        int8=1979,
        link="NVLink4",
        link_gbs=900,
        price=3.20,
        per_node=4,
    ),
    _gpu(
        "l40s",
        "NVIDIA L40S 48GB",
        "nvidia",
        44.4,
        864,
        362,
        fp32=91.6,
        fp8=733,
        int8=733,
        link="PCIe4",
        link_gbs=64,
        price=1.00,
    ),
    _gpu(
        "l4",
        "NVIDIA L4 24GB",
        "nvidia",
        22.0,
        300,
        121,
        fp32=30.3,
        fp8=242,
        int8=242,
        link="PCIe4",
        link_gbs=64,
        price=0.70,
    ),
    _gpu(
        "t4",
        "NVIDIA T4 16GB",
        "nvidia",
        15.0,
        320,
        65,
        fp32=8.1,
        int8=130,
        link="PCIe3",
        link_gbs=32,
        price=0.35,
    ),
    _gpu(
        "a10g",
        "NVIDIA A10G 24GB",
        "nvidia",
        22.0,
        600,
        70,
        fp32=31.2,
        int8=140,
        link="PCIe4",
        link_gbs=64,
        price=1.00,
    ),
    # One MI250 module is two GCDs; each GCD is a device (64 GB, half the module's figures).
    _gpu(
        "mi250",
        "AMD Instinct MI250 (one GCD)",
        "amd",
        64.0,
        1638,
        181,
        fp32=45.3,
        int8=181,
        link="Infinity Fabric",
        link_gbs=400,
        price=1.20,
    ),
    _gpu(
        "mi300x",
        "AMD Instinct MI300X 192GB",
        "amd",
        192.0,
        5300,
        1307,
        fp32=163,
        fp8=2615,
        int8=2615,
        link="Infinity Fabric",
        link_gbs=896,
        price=3.00,
    ),
    _gpu(
        "gaudi2",
        "Intel Gaudi2 96GB",
        "intel",
        96.0,
        2450,
        432,
        fp32=108,
        fp8=865,
        link="RoCE 24x100GbE",
        link_gbs=300,
        price=1.50,
    ),
)


class GpuCatalog:
    """Lookup of GPU specs by id; immutable, extend with ``with_entries``."""

    def __init__(self, entries: Iterable[GpuSpec] = _BUILTIN) -> None:
        self._by_id = {g.id: g for g in entries}

    def with_entries(self, entries: Iterable[GpuSpec]) -> GpuCatalog:
        """A new catalog where ``entries`` add to or replace the ones with the same id."""
        merged = dict(self._by_id)
        merged.update({g.id: g for g in entries})
        return GpuCatalog(merged.values())

    def ids(self) -> list[str]:
        """All known ids."""
        return list(self._by_id)

    def get(self, gpu_id: str) -> GpuSpec:
        """The spec for ``gpu_id``; raises ``SimInputError`` naming the known ids."""
        spec = self._by_id.get(gpu_id.strip().lower())
        if spec is None:
            raise SimInputError(
                f"unknown GPU {gpu_id!r}; known: {', '.join(self._by_id)}", code="unknown_gpu"
            )
        return spec


def default_catalog() -> GpuCatalog:
    """The built-in catalog."""
    return GpuCatalog()
