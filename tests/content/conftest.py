"""A data directory holding an imported bundle with a tiny container image, and the app on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.create import create_bundle
from appliance.bundle.importer import import_bundle
from appliance.bundle.recipe import load_recipe
from tests.conftest import AppFactory
from tests.oci import make_index_layout, make_oci_layout

IMAGE = "library/busybox-test"


@pytest.fixture
def image_bundle(tmp_path: Path) -> dict[str, Any]:
    """Build a bundle with one image and import it into ``tmp_path / "data"``."""
    layout = tmp_path / "srv" / "layout"
    digest = make_oci_layout(layout)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
name = "images"
version = "1.0.0"

[[images]]
source = "oci-layout:{layout}:busybox-test"
name = "{IMAGE}:1.0"

[[images]]
source = "oci-layout:{layout}:busybox-test"
name = "docker.io/library/mirrored:3"
""")
    bundle = tmp_path / "usb" / "bundle"
    create_bundle(load_recipe(recipe), bundle)
    import_bundle(tmp_path / "data", bundle, allow_unsigned=True)
    return {"digest": digest, "layout": layout, "bundle": bundle}


@pytest.fixture
async def registry(appliance: AppFactory, image_bundle: dict[str, Any]) -> Any:
    """A TestClient of the appliance (auth on for /api, none for /v2) with the image."""
    return await appliance()


@pytest.fixture
def scoped_images(tmp_path: Path) -> dict[str, Any]:
    """Two bundles imported into ``tmp_path / "data"`` (the app is not started).

    The first holds ``site/alpha:1``, ``site/beta:1`` (different layers) and ``site/multi:1``
    (an index of a linux/amd64 and a linux/arm64 image); the second ``site/alpha:2``.
    """
    srv = tmp_path / "srv"
    digests = {name: make_oci_layout(srv / name, name, f"hello from {name}\n".encode())
               for name in ("alpha1", "alpha2", "beta")}
    make_index_layout(srv / "multi", "multi")
    bundles = {}
    for number, images in ((1, [("alpha1", "site/alpha:1"), ("beta", "site/beta:1"),
                                ("multi", "site/multi:1")]),
                           (2, [("alpha2", "site/alpha:2")])):
        recipe = tmp_path / f"r{number}.toml"
        recipe.write_text(f'name = "scoped-{number}"\nversion = "1.0.0"\n' + "".join(
            f'\n[[images]]\nsource = "oci-layout:{srv / src}:{src}"\nname = "{name}"\n'
            for src, name in images))
        bundle = tmp_path / "usb" / f"bundle{number}"
        create_bundle(load_recipe(recipe), bundle)
        bundles[number] = import_bundle(tmp_path / "data", bundle,
                                        allow_unsigned=True).bundle_id
    return {"data": tmp_path / "data", "srv": srv, "digests": digests, "bundles": bundles}
