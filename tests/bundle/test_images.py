"""Container images in bundles: OCI layouts and docker save archives, recorded for /v2/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.bundle.create import create_bundle
from appliance.bundle.images import split_name
from appliance.bundle.importer import import_bundle
from appliance.bundle.recipe import load_recipe
from appliance.kernel.errors import BadRequest
from appliance.store.state import open_sync
from tests.bundle.conftest import MakeBundle
from tests.oci import make_docker_archive, make_oci_layout


def _tags(data: Path) -> dict[str, str]:
    conn = open_sync(data)
    try:
        return {f"{r[0]}:{r[1]}": r[2] for r in conn.execute(
            "SELECT repository, tag, digest FROM image_tags")}
    finally:
        conn.close()


def test_split_name() -> None:
    assert split_name("library/busybox-test:1.0") == ("library/busybox-test", "1.0")
    assert split_name("busybox") == ("busybox", "latest")
    for bad in ("Library/x:1", "x:bad tag", "../x:1", "/x:1"):
        with pytest.raises(BadRequest):
            split_name(bad)


def test_oci_layout_and_docker_archive_images(make_bundle: MakeBundle, data_dir: Path,
                                              tmp_path: Path) -> None:
    layout = tmp_path / "srv" / "layout"
    digest = make_oci_layout(layout)
    archive = tmp_path / "srv" / "saved.tar"
    layer = make_docker_archive(archive)
    bundle = make_bundle(extra=f"""
[[images]]
source = "oci-layout:{layout}:busybox-test"
name = "library/busybox-test:1.0"   # served as /v2/library/busybox-test/manifests/1.0

[[images]]
source = "docker-archive:{archive}"
name = "tools/saved:2"
""")
    manifest = json.loads((bundle / "bundle.json").read_text())
    images = [c for c in manifest["contents"] if c["kind"] == "image"]
    assert [(c["name"], c["version"]) for c in images] == [("library/busybox-test", "1.0"),
                                                           ("tools/saved", "2")]
    assert images[0]["manifest"] == digest
    assert (bundle / "blobs" / "sha256" / layer[7:]).is_file()
    result = import_bundle(data_dir, bundle)
    assert result.images == ["library/busybox-test:1.0", "tools/saved:2"]
    tags = _tags(data_dir)
    assert tags["library/busybox-test:1.0"] == digest
    assert tags["models/my-local-model:1.0.0"].startswith("sha256:")
    saved = json.loads((data_dir / "blobs" / "sha256" / tags["tools/saved:2"][7:]).read_text())
    assert saved["layers"][0]["digest"] == layer


def test_unknown_tag_in_layout_is_a_clear_error(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    make_oci_layout(layout)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
name = "x"
version = "1"
[[images]]
source = "oci-layout:{layout}:nope"
name = "a/b:1"
""")
    with pytest.raises(BadRequest, match="no image tagged 'nope'"):
        create_bundle(load_recipe(recipe), tmp_path / "out")


def test_corrupt_layer_in_source_layout_is_refused(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    make_oci_layout(layout)
    biggest = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:-1] + b"!")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
name = "x"
version = "1"
[[images]]
source = "oci-layout:{layout}:busybox-test"
name = "a/b:1"
""")
    with pytest.raises(BadRequest, match="does not match its digest"):
        create_bundle(load_recipe(recipe), tmp_path / "out")
