"""Browser fixtures: Debian's chromium driven by Playwright, and an appliance to point it at."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.ui.assets import web_root
from tests.conftest import ServerProcess, create_key, spawn_server

CHROMIUM = os.environ.get("APPLIANCE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
VIEWPORT = {"width": 1440, "height": 900}
ADMIN_USER = "admin"  # the first account, created at first start (docs/identity.md)
ADMIN_PASSWORD = "console-test-password"


def _require_tools() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright for Python is missing: .venv/bin/pip install -e '.[dev]' "
                    "(or pip install playwright; never `playwright install`)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    if not (web_root() / "static" / "vendor" / "axe.min.js").exists():
        pytest.fail("front-end libraries are not built (web/static/vendor): run `make web`")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium per module: Playwright's sync API keeps an event loop running
    while it is started, which async tests elsewhere must not find."""
    _require_tools()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory,
                   starter_bundle: Path) -> Iterator[ServerProcess]:
    """A real appliance with the starter models, owned by the browser tests."""
    root = tmp_path_factory.mktemp("ui")
    server = spawn_server(root / "data", starter=starter_bundle,
                          env={"APPLIANCE_METRICS__FLUSH_INTERVAL_S": "0.1",
                               "APPLIANCE_ADMIN_PASSWORD": ADMIN_PASSWORD})
    yield server
    code = server.stop()
    assert code == 0, server.logs()


@pytest.fixture(scope="module")
def admin_key(console_server: ServerProcess) -> str:
    return create_key(console_server.data_dir, "--admin")


class PageWatch:
    """Collects console errors and uncaught exceptions of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(
            f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(f"exception: {exc}"))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT, base_url=None)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.watch = PageWatch(page)
    yield page
    context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/screenshots/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, url: str, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> None:
    """Sign in with the user account through the sign-in page."""
    page.goto(url + "/sign-in")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(url + "/")
