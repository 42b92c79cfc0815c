"""The console's page in a real headless Chromium: served with its security headers,
no inline script can run under its Content-Security-Policy, the login form refuses a
wrong token and keeps the right one in sessionStorage only (never in a URL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdp.api.console_site import CSP
from tests.browser.conftest import console_url, log_in
from tests.support.stack import Stack
from tests.support.values import ADMIN_TOKEN

pytestmark = pytest.mark.integration


def test_the_page_and_its_assets_carry_the_security_headers(console: Stack) -> None:
    page = console.get("/console")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    html = page.body.decode()
    # no inline script or style in the page itself
    assert "<script>" not in html and "style=" not in html and "<style" not in html
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = console.get(f"/console/assets/{name}")
        assert asset.status == 200 and asset.headers["Content-Type"].startswith(kind)
        assert asset.headers["Content-Security-Policy"] == CSP
    for bad in ("nope.js", "..%2Fapi%2Fapp.py", "app.py", ".hidden.js"):
        missing = console.get(f"/console/assets/{bad}")
        assert missing.status == 404, bad
        assert missing.json()["status"] == "error"


def test_an_inline_script_is_blocked_by_the_policy(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_label("Admin token")).to_be_visible()
    # Inline markup as an attacker would inject it: neither an inline script nor an
    # inline event handler may run; the browser reports each as a violation.
    page.evaluate(
        """() => {
            window.__violations = [];
            document.addEventListener('securitypolicyviolation',
                (e) => window.__violations.push(e.effectiveDirective));
            const s = document.createElement('script');
            s.textContent = 'window.__inline = 1';
            document.body.appendChild(s);
            const div = document.createElement('div');
            div.innerHTML = '<img src="data:," onerror="window.__handler = 1">';
            document.body.appendChild(div);
        }"""
    )
    page.wait_for_function("() => window.__violations.length >= 2")
    directives = page.evaluate("() => window.__violations")
    assert set(directives) <= {"script-src-elem", "script-src-attr", "script-src"}
    assert page.evaluate("() => [window.__inline, window.__handler]") == [None, None]


def test_log_in_refuses_a_wrong_token_then_keeps_the_right_one(
    page: Any, console: Stack, shoot: Callable[[Any, str], Path]
) -> None:
    from playwright.sync_api import expect

    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    shoot(page, "login")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong token")
    assert page.evaluate("() => sessionStorage.getItem('cdp-admin-token')") is None
    assert page.locator("#nav").is_hidden()

    log_in(page)
    assert page.evaluate("() => sessionStorage.getItem('cdp-admin-token')") == ADMIN_TOKEN
    assert all(ADMIN_TOKEN not in url for url in requests)
    assert ADMIN_TOKEN not in page.url

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('cdp-admin-token')") is None
    # a reload after logging out asks again
    page.goto(console_url(console))
    expect(page.get_by_label("Admin token")).to_be_visible()
