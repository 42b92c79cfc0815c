"""Admin routes: segments, webhook subscriptions, replay, the live segment stream.

Every route here needs ``Authorization: Bearer <CDP_ADMIN_TOKEN>``; without the token
configured they all answer 401 (write keys never reach them). Definitions are
validated before anything is stored (400 with the JSON path of the offending node);
a new or changed definition starts a backfill that the sweeper runs and reports on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import secrets
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cdp import keys
from cdp.api.appkeys import REDIS, SETTINGS, TROUBLE
from cdp.api.body import ADMIN_BODY_LIMIT, read_body
from cdp.clock import wall_ms
from cdp.connect import redis_client
from cdp.errors import EventRejected
from cdp.replay import ReplayRequest, replay, since_ms
from cdp.segments.definitions import (
    builtins,
    delete_definition,
    load_segments,
    parse_definition,
)
from cdp.segments.rules import RuleError
from cdp.segments.sweeper import start_backfill
from cdp.segments.webhooks import Subscription, parse_subscription
from cdp.streams import last_id, tail, text

PAGE_MAX = 1000
# A start id for XREAD (both parts fit in 64 bits); also in the OpenAPI document.
STREAM_ID = re.compile(r"^(\$|[0-9]{1,19}(-[0-9]{1,19})?)$")
# A whole number in a query string (cursors, limits); also in the OpenAPI document.
WHOLE_NUMBER = re.compile(r"^[0-9]{1,18}$")
OPEN_STREAMS = web.AppKey("open_streams", set[asyncio.Task[Any]])


class Unauthorized(EventRejected):
    status = 401


class NotFound(EventRejected):
    status = 404


class Conflict(EventRejected):
    status = 409


def require_admin(request: web.Request) -> None:
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


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await read_body(request, ADMIN_BODY_LIMIT) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventRejected(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise EventRejected("body is nested too deeply") from None


# -- segments ------------------------------------------------------------------------


async def _segment_info(redis: Redis, name: str) -> dict[str, Any]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.segment_members(name))
        pipe.hgetall(keys.segment_backfill(name))
        members, backfill = await pipe.execute()
    info: dict[str, Any] = {"members": members}
    if backfill:
        fields = {text(k): text(v) for k, v in backfill.items()}
        info["backfill"] = {
            "state": fields.get("state"),
            "scanned": int(fields.get("scanned", 0)),
            "total": int(fields.get("total", 0)),
        }
    return info


async def list_segments(request: web.Request) -> web.Response:
    require_admin(request)
    redis = request.app[REDIS]
    segments = await load_segments(redis, request.app[SETTINGS])
    out = []
    for name in sorted(segments):
        out.append(segments[name].as_json() | await _segment_info(redis, name))
    return web.json_response({"segments": out})


async def get_segment(request: web.Request) -> web.Response:
    require_admin(request)
    name = request.match_info["name"]
    redis = request.app[REDIS]
    segment = (await load_segments(redis, request.app[SETTINGS])).get(name)
    if segment is None:
        raise NotFound(f"no segment named {name!r}")
    return web.json_response(segment.as_json() | await _segment_info(redis, name))


async def put_segment(request: web.Request) -> web.Response:
    require_admin(request)
    name = request.match_info["name"]
    if name in builtins(request.app[SETTINGS]):
        raise Conflict(f"{name!r} is built in; its thresholds are settings (README)")
    try:
        segment = parse_definition(name, await _json_body(request))
    except RuleError as exc:
        raise EventRejected(f"invalid segment definition: {exc}") from None
    redis = request.app[REDIS]
    created = not await redis.hexists(keys.SEGMENTS, name)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.SEGMENTS,
            name,
            json.dumps({"rule": segment.source, "description": segment.description}),
        )
        pipe.incr(keys.SEGMENTS_VERSION)
        await pipe.execute()
    await start_backfill(redis, name)
    body = segment.as_json() | await _segment_info(redis, name)
    return web.json_response(body, status=201 if created else 200)


async def delete_segment(request: web.Request) -> web.Response:
    require_admin(request)
    name = request.match_info["name"]
    if name in builtins(request.app[SETTINGS]):
        raise Conflict(f"{name!r} is built in and cannot be deleted")
    if not await delete_definition(request.app[REDIS], name):
        raise NotFound(f"no segment named {name!r}")
    return web.Response(status=204)


async def segment_members(request: web.Request) -> web.Response:
    require_admin(request)
    name = request.match_info["name"]
    redis = request.app[REDIS]
    if name not in await load_segments(redis, request.app[SETTINGS]):
        raise NotFound(f"no segment named {name!r}")
    cursor = _int_param(request, "cursor", 0, 0, None)
    limit = _int_param(request, "limit", 100, 1, PAGE_MAX)
    rows: Any = await redis.zrangebyscore(
        keys.segment_members(name), f"({cursor}", "+inf", start=0, num=limit, withscores=True
    )
    return web.json_response(
        {
            "segment": name,
            "members": [text(cid) for cid, _ in rows],
            "cursor": str(int(rows[-1][1])) if len(rows) == limit else None,
        }
    )


def _int_param(request: web.Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw.removeprefix("-")):  # not int(): it takes "+7", "٧"...
        raise EventRejected(f"query parameter {name!r} must be a whole number")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise EventRejected(f"query parameter {name!r} must be {bound}")
    return value


# -- webhooks ------------------------------------------------------------------------


async def create_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    sub = parse_subscription(await _json_body(request), secrets.token_hex(8), wall_ms())
    redis = request.app[REDIS]
    cursor = await last_id(redis, keys.SEGMENT_EVENTS)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.WEBHOOKS, sub.id, sub.encode())
        pipe.hset(keys.webhook_state(sub.id), mapping={"cursor": cursor, "attempts": 0})
        await pipe.execute()
    return web.json_response(sub.public(), status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    require_admin(request)
    redis = request.app[REDIS]
    subs = [Subscription.decode(v) for v in (await redis.hgetall(keys.WEBHOOKS)).values()]
    out = []
    for sub in sorted(subs, key=lambda s: s.id):
        state = {
            text(k): text(v) for k, v in (await redis.hgetall(keys.webhook_state(sub.id))).items()
        }
        out.append(sub.public(with_secret=False) | {"delivery": state})
    return web.json_response({"webhooks": out})


async def delete_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    sub_id = request.match_info["id"]
    redis = request.app[REDIS]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.WEBHOOKS, sub_id)
        pipe.delete(keys.webhook_state(sub_id))
        removed, _ = await pipe.execute()
    if not removed:
        raise NotFound(f"no webhook with id {sub_id!r}")
    return web.Response(status=204)


# -- replay --------------------------------------------------------------------------


async def replay_records(request: web.Request) -> web.Response:
    """``cdp replay`` over HTTP: the counts, and the first 1,000 records' outcomes."""
    require_admin(request)
    wanted = ReplayRequest.parse(await _json_body(request))
    redis = request.app[REDIS]
    report = await replay(
        redis,
        request.app[SETTINGS],
        wanted.source,
        since=await since_ms(redis, wanted.since),
        event_ids=wanted.event_ids,
        dry_run=wanted.dry_run,
    )
    return web.json_response(report.as_json())


# -- live stream ---------------------------------------------------------------------


async def stream_segment_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of cdp:segment-events, from Last-Event-ID or from now."""
    require_admin(request)
    settings = request.app[SETTINGS]
    start = request.headers.get("Last-Event-ID") or request.query.get("from") or "$"
    if not STREAM_ID.fullmatch(start):
        raise EventRejected(f"{start!r} is not a stream id (like 1700000000000-0, or $)")
    segment_filter = set(request.query.getall("segment", []))
    if start == "$":  # "now" is fixed before the client hears it is connected
        start = await last_id(request.app[REDIS], keys.SEGMENT_EVENTS)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    # XREAD blocks for one heartbeat interval, within the connection's socket timeout,
    # so an idle stream stays open and proxies see a comment every interval.
    heartbeat_ms = settings.stream_heartbeat_ms
    redis = redis_client(settings, blocking_ms=heartbeat_ms)
    streams = request.app[OPEN_STREAMS]
    task = asyncio.current_task()
    if task is not None:
        streams.add(task)
    loop = asyncio.get_running_loop()
    try:
        await response.write(b": connected\n\n")
        last_write = loop.time()
        async for item in tail(redis, keys.SEGMENT_EVENTS, start, block_ms=heartbeat_ms):
            if item is not None:
                entry_id, fields = item
                if not segment_filter or text(fields[b"segment"]) in segment_filter:
                    data = text(fields[b"e"])
                    await response.write(
                        f"id: {entry_id}\nevent: segment\ndata: {data}\n\n".encode()
                    )
                    last_write = loop.time()
                    continue
                if loop.time() - last_write < heartbeat_ms / 1000:
                    continue  # filtered out, and not silent for long yet
            await response.write(b": keep-alive\n\n")
            last_write = loop.time()
    except ConnectionResetError:  # the client left
        pass
    except RedisError as exc:
        # The response has started: end it properly (a final comment, then the end of
        # the chunked body) so the client sees a clean end and reconnects.
        request.app[TROUBLE].note("live stream ended: redis error", error=str(exc))
        with contextlib.suppress(ConnectionError):
            await response.write(
                b": the event store is unavailable; reconnect with Last-Event-ID\n\n"
            )
            await response.write_eof()
    finally:
        if task is not None:
            streams.discard(task)
        with contextlib.suppress(Exception):
            await redis.aclose()
    return response


async def close_streams(app: web.Application) -> None:
    """On shutdown, end open event streams instead of waiting out their reads."""
    streams: set[asyncio.Task[Any]] = app[OPEN_STREAMS]
    for task in list(streams):
        task.cancel()


def add_admin_routes(app: web.Application) -> None:
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(close_streams)
    app.router.add_get("/cdp/segments", list_segments)
    app.router.add_get("/cdp/segments/{name}", get_segment)
    app.router.add_put("/cdp/segments/{name}", put_segment)
    app.router.add_delete("/cdp/segments/{name}", delete_segment)
    app.router.add_get("/cdp/segments/{name}/members", segment_members)
    app.router.add_post("/cdp/webhooks", create_webhook)
    app.router.add_get("/cdp/webhooks", list_webhooks)
    app.router.add_delete("/cdp/webhooks/{id}", delete_webhook)
    app.router.add_get("/cdp/segment-events/stream", stream_segment_events)
    app.router.add_post("/cdp/replay", replay_records)
