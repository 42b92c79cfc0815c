"""The console's JSON routes, ``/cdp/console/*``: admin routes (``@admin``) that read.

- ``GET /cdp/console/events``: the live event debugger (``cdp.debugger``): each call
  sets the watch flag, so the API processes copy what they store to the tap stream
  (``cdp.api.tap``); the newest events of the tap and the partition streams, filtered
  (at most ``SCAN_CAP`` entries read per partition, ``TAP_SCAN_CAP`` tap items);
  ``after`` polls the tap for newer ones;
- ``GET /cdp/console/rejections``: the ingest routes' 4xx answers (``cdp.rejections``);
- ``GET /cdp/console/profiles/{id}``: the profile explorer (``cdp.explorer``);
- ``POST /cdp/console/segments:preview``: a definition tried on the live profiles
  (``cdp.segments.preview``);
- ``GET /cdp/console/webhooks``: subscriptions with their delivery state, no secrets,
  and the newest dead letters;
- ``GET /cdp/console/health``: counters, workers, partitions, streams, the last hour
  of samples (``cdp.health``).

Bad input is a 400 naming the parameter, an unknown profile a 404; Redis being down
is the errors middleware's 503 (``cdp.api.app``).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from cdp import keys
from cdp.api.appkeys import BODY, CLOCK, REDIS, SETTINGS, TAP
from cdp.api.auth import admin
from cdp.api.profiles import PROFILE_ID
from cdp.api.requests import Conflict, NotFound, int_param, json_body
from cdp.clock import wall_ms
from cdp.debugger import EventFilter, recent_events, tap_events
from cdp.errors import EventRejected, ProfileNotFound
from cdp.explorer import explore, record
from cdp.health import read_health
from cdp.profiles import normalise
from cdp.rejections import read_rejections
from cdp.segments.preview import preview
from cdp.segments.webhooks import Subscription
from cdp.streams import text

LIMIT_MAX = 200  # events or rejections per page
DEAD_SHOWN = 50  # newest cdp:webhooks:dead records shown
TYPES = ("identify", "track", "alias")
# A typed identifier (also the OpenAPI document's pattern of the parameter).
IDENTIFIER = re.compile(r"^(user|anon|email):[\s\S]*\S[\s\S]*$")
NO_IDENTIFIER = "\x00"  # what an identifier no event carries is normalised to
_encoder = msgspec.json.Encoder()


def _json(value: Any) -> web.Response:
    return web.Response(body=_encoder.encode(value), content_type="application/json")


def _text_param(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    return value if value else None


def _filter(request: web.Request) -> EventFilter:
    kind = _text_param(request, "type")
    if kind is not None and kind.lower() not in TYPES:
        raise EventRejected(f"query parameter 'type' must be one of {', '.join(TYPES)}")
    identifier = _text_param(request, "identifier")
    if identifier is not None:
        if not IDENTIFIER.fullmatch(identifier):
            raise EventRejected(
                "query parameter 'identifier' must be user:<userId>, anon:<anonymousId> "
                "or email:<address>"
            )
        try:
            identifier = normalise(identifier)
        except (ProfileNotFound, EventRejected):  # a blocked placeholder: on no event
            identifier = NO_IDENTIFIER
    return EventFilter(
        type=kind.lower() if kind is not None else None,
        name=_text_param(request, "name"),
        source=_text_param(request, "source"),
        identifier=identifier,
        blocked=request.app[SETTINGS].blocked_values,
    )


@admin
async def console_events(request: web.Request) -> web.Response:
    """The newest matching events, or (``after``) the tapped ones after the cursor.

    Every call sets the watch flag first, so every event accepted from then on (by
    any API process, within a second for the others) is in the tap until the flag
    expires, 30 s after the last call. Events accepted before the debugger was open
    are shown only while the partition streams still hold them (``stream-retention``).
    """
    limit = int_param(request, "limit", 50, 1, LIMIT_MAX)
    wanted = _filter(request)
    after = request.query.get("after")
    redis = request.app[REDIS]
    await request.app[TAP].watch()
    if after is not None:
        return _json(await tap_events(redis, limit, wanted, after))
    partitions = request.app[SETTINGS].partitions
    return _json(await recent_events(redis, partitions, limit, wanted))


@admin
async def console_rejections(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, 1, LIMIT_MAX)
    after = request.query.get("after")
    return _json(await read_rejections(request.app[REDIS], limit, after))


@admin
async def console_profile(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not PROFILE_ID.fullmatch(raw):
        normalise(raw)  # raises InvalidIdentifier (400) with the usual message
    try:
        found = await explore(request.app[REDIS], raw)
    except ProfileNotFound as exc:
        raise NotFound(str(exc)) from None
    if found is None:
        raise Conflict(f"the profile of {raw!r} is being merged; retry")
    return _json(found)


@admin
async def console_preview(request: web.Request) -> web.Response:
    body = await json_body(request)
    if not request.get(BODY):  # empty: json_body's null, but no definition was sent
        raise EventRejected("a JSON body is required: the definition and its name")
    now = await request.app[CLOCK].now_ms()
    return _json(await preview(request.app[REDIS], request.app[SETTINGS], body, now))


_STATE_INTS = ("attempts", "nextAt", "delivered", "retries", "dead")


def _delivery(raw: dict[Any, Any]) -> dict[str, Any]:
    fields = {text(k): text(v) for k, v in raw.items()}
    state: dict[str, Any] = {"cursor": fields.get("cursor")}
    for name in _STATE_INTS:
        state[name] = int(fields.get(name) or 0)
    state["lastError"] = fields.get("lastError") or None
    return state


@admin
async def console_webhooks(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    subs = sorted(
        (Subscription.decode(v) for v in (await redis.hgetall(keys.WEBHOOKS)).values()),
        key=lambda s: s.id,
    )
    async with redis.pipeline(transaction=False) as pipe:
        for sub in subs:
            pipe.hgetall(keys.webhook_state(sub.id))
        pipe.xrevrange(keys.WEBHOOKS_DEAD, count=DEAD_SHOWN)
        *states, dead = await pipe.execute()
    webhooks = [
        {"id": sub.id, "url": sub.url, "segments": sub.segments, "state": _delivery(state)}
        for sub, state in zip(subs, states, strict=True)
    ]
    return _json({"webhooks": webhooks, "dead": [record(i, f) for i, f in dead]})


@admin
async def console_health(request: web.Request) -> web.Response:
    """Operational time (the wall clock, as stream entry ids), not the events' clock."""
    now = wall_ms()
    partitions = request.app[SETTINGS].partitions
    return _json(await read_health(request.app[REDIS], partitions, now))


def add_console_routes(app: web.Application) -> None:
    app.router.add_get("/cdp/console/events", console_events)
    app.router.add_get("/cdp/console/rejections", console_rejections)
    app.router.add_get("/cdp/console/profiles/{id}", console_profile)
    app.router.add_post("/cdp/console/segments:preview", console_preview)
    app.router.add_get("/cdp/console/webhooks", console_webhooks)
    app.router.add_get("/cdp/console/health", console_health)
