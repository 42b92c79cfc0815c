"""The web console's pages: ``GET /console`` and ``GET /console/assets/{file}``.

The console is one HTML page and its ES modules, stylesheet and icon, shipped in the
package (``cdp/console/``) and served from memory (read once, when the routes are
added). No route here needs the token and none holds data: the page asks for the
admin token, keeps it in ``sessionStorage`` (``cdp-admin-token``) and sends it only
as the ``Authorization`` header of its fetch calls to the admin JSON routes
(``cdp.api.console`` and the existing ones).

Every answer of these routes carries ``CONSOLE_HEADERS``: a Content-Security-Policy
that allows scripts, styles and connections to this origin only (no inline script or
style, no framing, no form submission), ``nosniff`` and no referrer; the HTML is
``no-store``. An asset name is one plain file name (letters, digits, ``-``, ``_``, one
extension of ``ASSET_TYPES``); anything else, or a file that is not there, answers a
404 JSON error with the same headers.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
CONSOLE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_TYPES = {
    "js": "text/javascript",
    "css": "text/css",
    "svg": "image/svg+xml",
}
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.(js|css|svg)$")


def load_assets(directory: Path = CONSOLE_DIR / "assets") -> dict[str, bytes]:
    """Every servable file of ``directory`` by name."""
    if not directory.is_dir():
        return {}
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and _ASSET_NAME.match(path.name)
    }


def _not_found(message: str) -> web.Response:
    return web.json_response(
        {"status": "error", "message": message}, status=404, headers=CONSOLE_HEADERS
    )


def add_console_site_routes(app: web.Application) -> None:
    page = (CONSOLE_DIR / "index.html").read_bytes()
    assets = load_assets()

    async def console_page(request: web.Request) -> web.Response:
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={**CONSOLE_HEADERS, "Cache-Control": "no-store"},
        )

    async def console_asset(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        body = assets.get(name)
        if body is None:
            return _not_found(f"no console asset named {name!r}")
        kind = ASSET_TYPES[name.rsplit(".", 1)[1]]
        return web.Response(
            body=body,
            content_type=kind,
            charset=None if kind == "image/svg+xml" else "utf-8",
            headers={**CONSOLE_HEADERS, "Cache-Control": "no-cache"},
        )

    app.router.add_get("/console", console_page)
    app.router.add_get("/console/assets/{file}", console_asset)
