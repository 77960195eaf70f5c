"""Every page in a real browser: screenshots, no console errors, no serious axe violations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.ui.conftest import screenshot, sign_in
from tests.ui.seed import seed

PAGES = ["/", "/usage", "/models", "/routes", "/playground", "/hosts", "/hosts/gpu-01",
         "/deployments", "/keys", "/access", "/audit", "/bundles", "/registry", "/simulator"]
BLOCKING = ("serious", "critical")


def _axe(page: Any) -> list[dict[str, Any]]:
    """Run axe-core, served from the appliance's own static files, on the current page."""
    page.add_script_tag(url="/static/vendor/axe.min.js")
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
    }""")
    return [v for v in result if v["impact"] in BLOCKING]


@pytest.fixture(scope="module")
def seeded(console_server: ServerProcess) -> ServerProcess:
    """The server with two hosts (one detected 8 x H100) and two deployments."""
    seed(console_server.data_dir)
    return console_server


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_page_renders_accessibly(page: Any, seeded: ServerProcess, theme: str) -> None:
    console_server = seeded
    url = console_server.url
    page.goto(url + "/sign-in")
    page.evaluate(f"localStorage.setItem('fa-theme', '{theme}')")
    page.reload()
    problems = {}
    if violations := _axe(page):
        problems["/sign-in"] = violations
    screenshot(page, f"{theme}-sign-in")
    sign_in(page, url)
    for path in PAGES:
        page.goto(url + path)
        page.wait_for_load_state("networkidle") if path != "/" else page.wait_for_selector(
            "#live.on")
        name = "overview" if path == "/" else path.strip("/").replace("/", "-")
        screenshot(page, f"{theme}-{name}")
        if violations := _axe(page):
            problems[path] = violations
    assert not problems, json.dumps(problems, indent=1)
    assert not page.watch.errors, json.dumps(page.watch.errors, indent=1)


def test_tables_search_sort_and_keyboard(page: Any, console_server: ServerProcess) -> None:
    url = console_server.url
    sign_in(page, url)
    page.goto(url + "/models")
    search = page.get_by_role("searchbox", name="Search Imported models")
    search.fill("smollm2")
    assert page.locator("table[data-table] tbody tr").count() == 1
    search.fill("no-such-model")
    assert "Nothing matches" in page.locator("table[data-table] tbody").inner_text()
    search.fill("")
    header = page.get_by_role("button", name="Model", exact=True)
    header.focus()
    page.keyboard.press("Enter")
    assert page.locator("th[aria-sort=ascending]").count() == 1
    first = page.locator("table[data-table] tbody tr").first.inner_text()
    page.keyboard.press("Enter")
    assert page.locator("table[data-table] tbody tr").first.inner_text() != first
    # the skip link is the first stop of the keyboard
    page.keyboard.press("Home")
    page.goto(url + "/usage")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    assert not page.watch.errors, json.dumps(page.watch.errors, indent=1)


def test_hosts_and_deployments_pages(page: Any, seeded: ServerProcess) -> None:
    """Inline validation, the host-key confirmation, a check with live progress, a proposal."""
    url = seeded.url
    sign_in(page, url)
    page.goto(url + "/hosts")
    page.get_by_role("button", name="Add host", exact=True).first.click()
    assert page.evaluate("document.activeElement.id") == "host-name"
    page.locator("#add-submit").click()
    assert page.locator("#host-name-error").inner_text()
    page.locator("#host-name").fill("Bad Name")
    page.locator("#host-address").fill("127.0.0.1")
    page.locator("#host-name").press("Tab")
    assert page.locator("#host-name").get_attribute("aria-invalid") == "true"
    # a host whose SSH port is closed is saved, with its key still to fetch
    page.locator("#host-name").fill("edge-03")
    page.locator("#host-port").fill("1")
    page.locator("#auth-password").check()
    assert page.locator("#host-password").is_visible()
    page.locator("#host-password").fill("secret-password")
    page.locator("#add-submit").click()
    page.wait_for_selector("tr[data-host=edge-03]")
    assert "could not be fetched" in page.locator("#toasts").inner_text()
    # the key a host offers is shown for confirmation
    page.get_by_role("button", name="Accept the host key of cpu-02").click()
    box = page.get_by_test_id("key-confirm")
    assert box.is_visible() and "SHA256:Qz1" in box.get_by_test_id("fingerprint").inner_text()
    assert page.evaluate("document.activeElement.id") == "key-accept"
    page.keyboard.press("Escape")
    assert not box.is_visible()
    # Check runs preflight; its progress streams per host (this host's secret is a dummy)
    page.get_by_role("button", name="Check gpu-01 (preflight and detect)").click()
    progress = page.get_by_test_id("progress")
    progress.locator(".progress-host[data-host=gpu-01] .badge.failed").first.wait_for()
    page.wait_for_function(
        "() => document.getElementById('progress-live').textContent === 'finished'")
    assert "preflight" in page.locator("#progress-status").inner_text()
    screenshot(page, "light-hosts-after-check")
    # deployments: review a proposal, discard it
    page.goto(url + "/deployments")
    page.get_by_role("button", name="Review and confirm deployment dep_seedproposal").click()
    page.wait_for_function("() => document.getElementById('proposal-h').textContent"
                           " === 'Proposal dep_seedproposal'")
    proposal = page.get_by_test_id("proposal")
    assert "2 \u00d7 h100-sxm" in proposal.inner_text()
    screenshot(page, "light-deployments-proposal")
    page.locator("#discard").click()
    page.wait_for_selector("tr[data-deployment=dep_seedproposal]", state="detached")
    # a new proposal for a detected host: the simulator's configuration, to confirm
    page.get_by_label("Target").select_option("host:gpu-01")
    page.locator("#propose").click()
    page.wait_for_function("() => !document.getElementById('proposal-panel').hidden"
                           " && document.getElementById('proposal-h').textContent"
                           " !== 'Proposal dep_seedproposal'")
    assert "h100-sxm" in proposal.inner_text() and proposal.locator("#confirm").is_visible()
    assert page.evaluate("document.activeElement.id") == "confirm"
    assert not page.watch.errors, json.dumps(page.watch.errors, indent=1)


def test_simulator_calibration_from_the_page(page: Any, seeded: ServerProcess,
                                             tmp_path: Any) -> None:
    """Upload this site's measurements, see the accuracy table, go back to shipped."""
    from tests.sim.test_calibration import site_csv

    measurements = tmp_path / "site.csv"
    measurements.write_text(site_csv())
    url = seeded.url
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, url)
    page.goto(url + "/simulator")
    assert page.get_by_text("Predictions use the shipped regressor").is_visible()
    page.get_by_role("button", name="Calibrate").click()  # no file: an inline error
    assert page.locator("#measurements-error").inner_text()
    page.get_by_label("Measurements (CSV)").set_input_files(str(measurements))
    page.get_by_role("button", name="Calibrate").click()
    table = page.locator("#cal-accuracy")
    table.wait_for()
    assert "h100-sxm" in table.inner_text()
    page.wait_for_function("() => !document.getElementById('runs').textContent.includes('Loading')")
    screenshot(page, "simulator-calibrated")
    assert not _axe(page)
    page.get_by_role("button", name="Back to shipped").click()
    table.wait_for(state="detached")
    assert page.get_by_text("Predictions use the shipped regressor").is_visible()
    # the page swapped in place still plans
    page.get_by_role("button", name="Recommend").click()
    page.locator("#ranked-panel").wait_for(state="visible")
    assert not page.watch.errors, json.dumps(page.watch.errors, indent=1)
