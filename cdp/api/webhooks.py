"""Admin routes of webhook subscriptions: create (with its signing secret), list, delete.

A new subscription starts at the current end of ``cdp:segment-events``; the leased
dispatcher (``cdp.segments.webhooks``, run by one worker) delivers from there. The
list shows each subscription's delivery state (cursor, attempts), never its secret.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from cdp import keys
from cdp.api.appkeys import REDIS
from cdp.api.auth import admin
from cdp.api.requests import NotFound, json_body
from cdp.clock import wall_ms
from cdp.segments.webhooks import Subscription, parse_subscription
from cdp.streams import last_id, text


@admin
async def create_webhook(request: web.Request) -> web.Response:
    sub = parse_subscription(await json_body(request), secrets.token_hex(8), wall_ms())
    redis = request.app[REDIS]
    cursor = await last_id(redis, keys.SEGMENT_EVENTS)
    # Its delivery state first, then the subscription (two slots on a cluster): the
    # dispatcher only walks subscriptions, so a crash in between leaves an unused state
    # hash, and never a subscription without its cursor.
    await redis.hset(keys.webhook_state(sub.id), mapping={"cursor": cursor, "attempts": 0})
    await redis.hset(keys.WEBHOOKS, sub.id, sub.encode())
    return web.json_response(sub.public(), status=201)


@admin
async def list_webhooks(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    subs = [Subscription.decode(v) for v in (await redis.hgetall(keys.WEBHOOKS)).values()]
    out = []
    for sub in sorted(subs, key=lambda s: s.id):
        state = {
            text(k): text(v) for k, v in (await redis.hgetall(keys.webhook_state(sub.id))).items()
        }
        out.append(sub.public(with_secret=False) | {"delivery": state})
    return web.json_response({"webhooks": out})


@admin
async def delete_webhook(request: web.Request) -> web.Response:
    sub_id = request.match_info["id"]
    redis = request.app[REDIS]
    # The subscription first (the dispatcher stops delivering it), then its state: a
    # crash in between leaves the state, which a DELETE again removes.
    removed = await redis.hdel(keys.WEBHOOKS, sub_id)
    removed += await redis.delete(keys.webhook_state(sub_id))
    if not removed:
        raise NotFound(f"no webhook with id {sub_id!r}")
    return web.Response(status=204)


def add_webhook_routes(app: web.Application) -> None:
    app.router.add_post("/cdp/webhooks", create_webhook)
    app.router.add_get("/cdp/webhooks", list_webhooks)
    app.router.add_delete("/cdp/webhooks/{id}", delete_webhook)
