"""The Bundles page in a browser: upload a bundle tar from this computer and see it imported."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.create import create_bundle
from appliance.bundle.recipe import load_recipe
from tests.bundle.conftest import gguf, trust, write_recipe
from tests.conftest import ServerProcess
from tests.ui.conftest import screenshot, sign_in
from tests.ui.test_pages import _axe


def _signed_tar(root: Path, key: Ed25519PrivateKey) -> Path:
    recipe = write_recipe(root, model=gguf(3_000_000))  # takes seconds at the throttled rate
    create_bundle(load_recipe(recipe), root / "bundle", sign_key=key)
    tar = root / "site-starter-1.0.0.tar"
    with tarfile.open(tar, "w") as f:
        f.add(root / "bundle", arcname=".")
    return tar


def test_upload_a_bundle_from_the_browser(page: Any, console_server: ServerProcess,
                                          tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url = console_server.url
    key = Ed25519PrivateKey.generate()
    trust(console_server.data_dir, key)  # an import reads the trusted keys when it starts
    tar = _signed_tar(tmp_path, key)
    sign_in(page, url)
    page.goto(url + "/bundles")
    bundles = page.locator("table[data-table]")
    expect(bundles).not_to_contain_text("site-starter")

    # a slow link (1 MiB/s up), so the upload's progress can be seen
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                  "downloadThroughput": -1,
                                                  "uploadThroughput": 1024 * 1024})
    page.get_by_label("Bundle tar file").set_input_files(str(tar))
    page.get_by_role("button", name="Upload", exact=True).click()
    status = page.get_by_test_id("upload-status")
    expect(status).to_contain_text(re.compile(r"Uploading site-starter-1\.0\.0\.tar: [\d.]+% · "
                                              r".* of 2\.\d MiB · .*/s"))
    assert page.locator("#upload-bar").evaluate("b => b.value") > 0
    expect(page.get_by_role("button", name="Uploading…")).to_be_disabled()
    screenshot(page, "bundles-uploading")
    result = page.get_by_test_id("upload-result")
    expect(result).to_contain_text("Imported site-starter 1.0.0", timeout=60_000)
    expect(result).to_have_class(re.compile(r"\bok\b"))
    expect(result).to_contain_text("my-local-model")
    expect(status).to_have_text("Imported site-starter 1.0.0")  # announced (aria-live)
    # the list was refreshed in place, and the result stayed on the page
    expect(bundles).to_contain_text("site-starter")
    expect(bundles).to_contain_text("my-local-model 1.0.0")
    expect(bundles).to_contain_text("upload:site-starter-1.0.0.tar")
    expect(page.get_by_role("button", name="Upload", exact=True)).to_be_enabled()
    screenshot(page, "bundles-upload")
    problems = {"light": _axe(page)}
    page.get_by_role("button", name="Dark theme").click()
    screenshot(page, "dark-bundles-upload")
    problems["dark"] = _axe(page)

    # a corrupt tar: the upload is taken, its import fails and says why
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(b"this is not a tar\n" * 4096)
    page.get_by_label("Bundle tar file").set_input_files(str(corrupt))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(result).to_contain_text("Import failed", timeout=60_000)
    expect(result).to_have_class(re.compile(r"\bbad\b"))
    error = result.locator("p").inner_text()
    assert error == "upload:corrupt.tar is not an uncompressed tar archive: invalid header", error
    screenshot(page, "dark-bundles-upload-failed")
    problems["failed"] = _axe(page)

    # the path form still works after the in-place refreshes (listeners are delegated)
    page.get_by_label("Path on this host").fill(str(tmp_path / "bundle"))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("#import-status")).to_have_text("Already imported: site-starter 1.0.0")
    assert not any(problems.values()), json.dumps(problems, indent=1)
    assert not page.watch.errors, json.dumps(page.watch.errors, indent=1)
