"""An operator's day in a real browser: sign in, create a key, chat, watch, revoke, sign out."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from tests.conftest import ServerProcess
from tests.ui.conftest import screenshot, sign_in

CHAT_MODEL = "smollm2-135m-instruct"


def _models_status(url: str, key: str) -> int:
    req = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_operator_journey(page: Any, console_server: ServerProcess, admin_key: str) -> None:
    url = console_server.url
    page.on("dialog", lambda dialog: dialog.accept())

    # signed out: every page leads to sign-in, and a wrong API key is refused inline
    page.goto(url + "/keys")
    assert "/sign-in" in page.url
    page.get_by_text("Sign in with an admin API key instead").click()
    page.get_by_label("Admin API key").fill("sk-fa-not-a-key")
    page.get_by_role("button", name="Sign in with the key").click()
    assert "Incorrect API key" in page.locator("#api_key-error").inner_text()
    # an admin key signs in too (scripts' way in) ...
    page.get_by_label("Admin API key").fill(admin_key)
    page.get_by_role("button", name="Sign in with the key").click()
    page.wait_for_url(url + "/keys")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/sign-in\?bye=1$"))
    # ... but people sign in with their account
    sign_in(page, url)
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert "admin" in page.locator(".operator").inner_text()

    # create a key: the secret is shown once, with a copy button
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("journey-app")
    page.get_by_label("Requests/min").fill("600")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-secret")
    secret.wait_for(state="visible")
    new_key = secret.inner_text()
    assert new_key.startswith("sk-fa-")
    row = page.locator("#keys-table tr", has_text="journey-app")
    assert row.locator(".badge").inner_text() == "active"
    assert _models_status(url, new_key) == 200
    screenshot(page, "journey-01-key-created")

    # inline validation: a key needs a name
    page.get_by_role("button", name="Create key").click()
    assert page.locator("#name-error").inner_text()

    # playground: the answer streams in piece by piece
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model").select_option(CHAT_MODEL)
    page.get_by_label("System prompt").fill("You are a concise assistant.")
    page.get_by_label("Max tokens").fill("24")
    page.evaluate("""() => {
        window.__pieces = 0;
        new MutationObserver((list) => { window.__pieces += list.length; })
          .observe(document.getElementById('transcript'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    page.get_by_label("Message").fill("Name three colours.")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => document.getElementById('ttft').textContent.includes('ms')")
    page.wait_for_function(
        "() => !document.getElementById('send').disabled")
    answer = page.locator(".msg.assistant .text").last.inner_text()
    assert answer.strip(), "the model answered nothing"
    assert page.evaluate("window.__pieces") > 3, "the answer did not arrive in pieces"
    assert re.match(r"[\d,]+ ms", page.get_by_test_id("ttft").inner_text())
    assert CHAT_MODEL in page.locator("#curl").inner_text()
    screenshot(page, "journey-02-playground")

    # overview: the request is counted and charted
    page.get_by_role("link", name="Overview").click()
    page.wait_for_function(
        "() => window.FA && FA.lastSnapshot && FA.lastSnapshot.totals.requests >= 1")
    top = page.get_by_test_id("top-models")
    assert CHAT_MODEL in top.inner_text()
    charted = page.evaluate("FA.lastSnapshot.series.rps.reduce((a, b) => a + b, 0)")
    assert charted > 0
    page.wait_for_selector("#live.on")
    screenshot(page, "journey-03-overview")

    # revoke the key: it stops working at once
    page.get_by_role("link", name="API keys").click()
    page.get_by_role("button", name="Revoke key journey-app").click()
    page.locator("#keys-table tr", has_text="journey-app").wait_for(state="detached")
    assert _models_status(url, new_key) == 401

    # audit: the verify button answers with a result
    page.get_by_role("link", name="Audit").click()
    page.get_by_test_id("verify").click()
    result = page.get_by_test_id("verify-result")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=verify-result]')"
        ".textContent.includes('Verifying')")
    text = result.inner_text()
    assert text.startswith("Chain intact"), text
    trail = page.locator("table[data-table]").inner_text()
    assert "key.create" in trail and "key.revoke" in trail and "user:admin" in trail
    screenshot(page, "journey-04-audit")

    # sign out: back to the sign-in page, and pages need signing in again
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/sign-in\?bye=1$"))
    assert page.get_by_text("You are signed out").is_visible()
    page.goto(url + "/")
    assert "/sign-in" in page.url
    assert not page.watch.errors, json.dumps(page.watch.errors, indent=1)
