"""The console's package files (cdp/console/): every module the page loads is a file
the asset route serves, and no script writes markup or runs strings as code (data goes
into the page as text only; the browser tests check the same in a real Chromium)."""

from __future__ import annotations

import re

from cdp.api.console_site import ASSET_TYPES, CONSOLE_DIR, load_assets

ASSETS = load_assets()
SCRIPTS = {name: body.decode() for name, body in ASSETS.items() if name.endswith(".js")}


def test_the_page_loads_only_served_assets_and_has_no_inline_code() -> None:
    html = (CONSOLE_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert refs, "the page loads nothing"
    for ref in refs:
        assert ref.startswith("/console/assets/"), ref
        assert ref.removeprefix("/console/assets/") in ASSETS, ref
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline <script>"
    assert "<style" not in html and "style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"


def test_every_module_import_resolves_to_a_served_asset() -> None:
    assert "app.js" in SCRIPTS
    for name, source in SCRIPTS.items():
        for target in re.findall(r'from\s+"\./([^"]+)"', source):
            assert target in ASSETS, f"{name} imports {target}, which is not served"


def test_no_script_writes_markup_or_evaluates_strings() -> None:
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
        r"|setTimeout\(\s*[\"'`]|\.setAttribute\(\s*[\"']on|\.style\s*="
    )
    for name, source in SCRIPTS.items():
        assert not forbidden.search(source), f"{name}: {forbidden.search(source)}"


def test_only_known_kinds_are_served() -> None:
    assert ASSETS
    for name in ASSETS:
        assert name.rsplit(".", 1)[1] in ASSET_TYPES
