"""The bundle format: an OCI image layout plus a bundle manifest listing every file's sha256.

```
BUNDLE/
  oci-layout              {"imageLayoutVersion": "1.0.0"}
  index.json              OCI index; one manifest per model, image or file
  blobs/sha256/<hex>      content-addressed blobs (model files are uncompressed layers)
  bundle.json             name, version, created, contents, and size + sha256 of every file
  bundle.json.sig         Ed25519 signature over the exact bytes of bundle.json (optional)
```
A blob larger than the part size given to ``bundle create --part-size`` is stored as
``blobs/sha256/<hex>.part0001``, ``.part0002`` … each listed with its own size and sha256.
Models are OCI artefacts (``artifactType`` ``MODEL_ARTIFACT``): a config blob describing the
model and one layer per model file, titled with the file's path inside the model.
"""

from __future__ import annotations

import re

import msgspec

BUNDLE_MANIFEST = "bundle.json"
FORMAT_VERSION = 1
MODEL_ARTIFACT = "application/vnd.foundry.model.v1"
MODEL_CONFIG = "application/vnd.foundry.model.config.v1+json"
MODEL_LAYER = "application/vnd.foundry.model.file.v1"
FILE_ARTIFACT = "application/vnd.foundry.file.v1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
KIND = "dev.foundry.kind"
# on an image index pulled from a registry: the one platform whose manifest the bundle carries
PLATFORM = "dev.foundry.platform"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class Descriptor(msgspec.Struct, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    annotations: dict[str, str] = {}
    artifactType: str = ""


class OciManifest(msgspec.Struct, omit_defaults=True):
    schemaVersion: int
    mediaType: str
    config: Descriptor
    layers: list[Descriptor]
    artifactType: str = ""
    annotations: dict[str, str] = {}


class OciIndex(msgspec.Struct, omit_defaults=True):
    schemaVersion: int
    manifests: list[Descriptor]
    mediaType: str = OCI_INDEX


class ModelConfig(msgspec.Struct, forbid_unknown_fields=False):
    """The config blob of a model artefact."""

    name: str
    task: str  # chat | embedding
    format: str  # gguf | bert-safetensors
    files: list[str]
    source: str = ""


class BundlePart(msgspec.Struct):
    """One piece of a blob split for FAT32 media: ``blobs/sha256/<hex>.partNNNN``."""

    path: str
    size: int
    sha256: str


class BundleFile(msgspec.Struct, omit_defaults=True):
    path: str
    size: int
    sha256: str
    # when set, the file itself is absent and these pieces, concatenated, are its bytes
    parts: list[BundlePart] = []


class BundleEntry(msgspec.Struct, omit_defaults=True):
    kind: str  # model | image | file
    name: str
    manifest: str  # digest of the OCI manifest
    version: str = ""


class BundleManifest(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    name: str
    version: str
    created: str
    contents: list[BundleEntry]
    files: list[BundleFile]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def blob_path(digest: str) -> str:
    """Relative path of a blob inside an OCI layout."""
    algo, _, hexdigest = digest.partition(":")
    return f"blobs/{algo}/{hexdigest}"
