"""Every page in a real browser: screenshots, no console errors, no serious axe violations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.ui.conftest import screenshot, sign_in

PAGES = ["/", "/usage", "/models", "/routes", "/playground", "/keys", "/access", "/audit",
         "/bundles", "/registry", "/simulator"]
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


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_page_renders_accessibly(page: Any, console_server: ServerProcess,
                                       theme: str) -> None:
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
        name = "overview" if path == "/" else path.strip("/")
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
