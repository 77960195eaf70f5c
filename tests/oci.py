"""Tiny container images for tests, built here (no network): OCI layouts and `docker save` tars.

The building blocks write one piece each (a blob, an image manifest, a multi-arch index, the
layout's ``oci-layout`` and ``index.json``); ``make_oci_layout``, ``make_index_layout`` and
``make_docker_archive`` put them together into the images the tests use.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"

Descriptor = dict[str, Any]


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar holding ``files`` (fixed mode and mtime, so digests are stable)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def host_arch() -> str:
    """This machine's architecture as OCI names it (``amd64``, ``arm64``)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def image_parts(text: bytes = b"hello from the appliance\n") -> tuple[bytes, bytes]:
    """(layer tar, config JSON) of a one-file image for this machine's architecture."""
    layer = layer_tar({"hello.txt": text})
    config = json.dumps(
        {
            "architecture": host_arch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
        },
        separators=(",", ":"),
    ).encode()
    return layer, config


def write_blob(root: Path, data: bytes, media_type: str) -> Descriptor:
    """Store ``data`` under ``root/blobs/sha256/``; returns its descriptor."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    digest = sha256_digest(data)
    (blobs / digest[7:]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_image(
    root: Path, config: bytes, layers: list[bytes], *, indent: int | None = None
) -> Descriptor:
    """Store an image (config, layers, manifest) as blobs; returns the manifest's descriptor."""
    blobs = [write_blob(root, layer, OCI_LAYER) for layer in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": write_blob(root, config, OCI_CONFIG),
            "layers": blobs,
        },
        indent=indent,
    ).encode()
    return write_blob(root, manifest, OCI_MANIFEST)


def write_index(root: Path, platforms: list[tuple[Descriptor, str]]) -> Descriptor:
    """Store a multi-arch index of (manifest descriptor, linux architecture) pairs."""
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**manifest, "platform": {"os": "linux", "architecture": arch}}
                for manifest, arch in platforms
            ],
        }
    ).encode()
    return write_blob(root, index, OCI_INDEX)


def write_layout(root: Path, tags: dict[str, Descriptor]) -> None:
    """Write ``oci-layout`` and ``index.json`` naming each descriptor by its tag."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {**descriptor, "annotations": {REF_NAME: tag}}
                    for tag, descriptor in tags.items()
                ],
            }
        )
    )


def make_oci_layout(
    root: Path, tag: str = "busybox-test", text: bytes = b"hello from the appliance\n"
) -> str:
    """A one-image OCI layout under ``root`` tagged ``tag``; returns the manifest digest."""
    layer, config = image_parts(text)
    manifest = write_image(root, config, [layer], indent=2)
    write_layout(root, {tag: manifest})
    return str(manifest["digest"])


def make_index_layout(root: Path, tag: str = "multi") -> str:
    """An OCI layout whose ``tag`` is an index of a linux/amd64 and a linux/arm64 image.

    Returns the index's digest.
    """
    platforms = []
    for arch in ("amd64", "arm64"):
        layer = layer_tar({"hello.txt": f"hello from {arch}\n".encode()})
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
            }
        ).encode()
        platforms.append((write_image(root, config, [layer]), arch))
    index = write_index(root, platforms)
    write_layout(root, {tag: index})
    return str(index["digest"])


def make_docker_archive(path: Path, text: bytes = b"hello from docker save\n") -> str:
    """A `docker save` style tar (legacy layout); returns the layer's digest."""
    layer, config = image_parts(text)
    config_name = sha256_digest(config)[7:] + ".json"
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (config_name, config),
            ("abc123/layer.tar", layer),
            (
                "manifest.json",
                json.dumps(
                    [
                        {
                            "Config": config_name,
                            "RepoTags": ["busybox-test:1.0"],
                            "Layers": ["abc123/layer.tar"],
                        }
                    ]
                ).encode(),
            ),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return sha256_digest(layer)
