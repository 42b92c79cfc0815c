"""The admin token: one check guards every handler marked ``@admin``.

An admin route (segments, webhooks, replay, the live segment stream, profiles,
erasure, jobs, suppressions) is registered with a handler decorated ``@admin``.
``check_admin_token`` lets a request reach such a handler only with ``Authorization:
Bearer <CDP_ADMIN_TOKEN>``, before the handler reads anything; without a token configured
every admin route answers 401, and write keys never open one. Unmarked routes
(``POST /cdp/ingest``, ``/v1/*`` with their write keys, ``/healthz``, ``/readyz``,
``/metrics``, ``/openapi.json``) and requests that match no route (404, 405) pass
untouched. The mark is on the handler, so the HEAD route aiohttp adds beside a GET
is guarded with it. ``cdp.api.app``'s errors middleware makes the check for every
request; ``admin_auth`` is the same check as a middleware of its own.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web

from cdp.api.appkeys import SETTINGS
from cdp.errors import EventRejected

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

_MARK = "cdp_admin_route"


class Unauthorized(EventRejected):
    status = 401


def admin(handler: H) -> H:
    """Mark ``handler`` as an admin route's: only the admin token reaches it."""
    setattr(handler, _MARK, True)
    return handler


def is_admin(handler: object) -> bool:
    return getattr(handler, _MARK, False) is True


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_admin(request.match_info.handler):
        check_admin_token(request)
    return await handler(request)


def check_admin_token(request: web.Request) -> None:
    """Raise Unauthorized unless the request carries the configured admin token."""
    token = request.app[SETTINGS].admin_token
    if not token:
        raise Unauthorized("admin routes are disabled: set CDP_ADMIN_TOKEN on the server")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        # aiohttp decodes header bytes with surrogateescape: encode them back the same way.
        given.strip().encode("utf-8", "surrogateescape"),
        token.encode(),
    ):
        raise Unauthorized("this route needs the admin token: Authorization: Bearer <token>")
