"""Admin routes of segment definitions: list, read, create or change, delete, members.

Definitions are validated before anything is stored (400 with the JSON path of the
offending node, ``cdp.segments.rules``, and ``errors``: ``[{field, message}]`` as the
console's preview lists them); built-ins are read-only (409). A new or
changed definition starts a backfill that the sweeper runs; each definition is
answered with its member count and its backfill's progress.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from cdp import keys
from cdp.api.appkeys import REDIS, SETTINGS
from cdp.api.auth import admin
from cdp.api.requests import PAGE_MAX, Conflict, NotFound, int_param, json_body
from cdp.connect import Client
from cdp.segments.definitions import (
    builtins,
    delete_definition,
    load_segments,
    parse_definition,
    store_definition,
)
from cdp.segments.preview import field_errors
from cdp.segments.rules import RuleError
from cdp.segments.sweeper import start_backfill
from cdp.streams import text


async def _segment_info(redis: Client, name: str) -> dict[str, Any]:
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


@admin
async def list_segments(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    segments = await load_segments(redis, request.app[SETTINGS])
    out = []
    for name in sorted(segments):
        out.append(segments[name].as_json() | await _segment_info(redis, name))
    return web.json_response({"segments": out})


@admin
async def get_segment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    redis = request.app[REDIS]
    segment = (await load_segments(redis, request.app[SETTINGS])).get(name)
    if segment is None:
        raise NotFound(f"no segment named {name!r}")
    return web.json_response(segment.as_json() | await _segment_info(redis, name))


@admin
async def put_segment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name in builtins(request.app[SETTINGS]):
        raise Conflict(f"{name!r} is built in; its thresholds are settings (README)")
    try:
        segment = parse_definition(name, await json_body(request))
    except RuleError as exc:  # the message, and the offending node as the console shows it
        return web.json_response(
            {
                "status": "error",
                "message": f"invalid segment definition: {exc}",
                "errors": msgspec.to_builtins(field_errors(exc)),
            },
            status=400,
        )
    redis = request.app[REDIS]
    created = not await redis.hexists(keys.SEGMENTS, name)
    await store_definition(redis, segment)
    await start_backfill(redis, name)
    body = segment.as_json() | await _segment_info(redis, name)
    return web.json_response(body, status=201 if created else 200)


@admin
async def delete_segment(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name in builtins(request.app[SETTINGS]):
        raise Conflict(f"{name!r} is built in and cannot be deleted")
    if not await delete_definition(request.app[REDIS], name, request.app[SETTINGS]):
        raise NotFound(f"no segment named {name!r}")
    return web.Response(status=204)


@admin
async def segment_members(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    redis = request.app[REDIS]
    if name not in await load_segments(redis, request.app[SETTINGS]):
        raise NotFound(f"no segment named {name!r}")
    cursor = int_param(request, "cursor", 0, 0, None)
    limit = int_param(request, "limit", 100, 1, PAGE_MAX)
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


def add_segment_routes(app: web.Application) -> None:
    app.router.add_get("/cdp/segments", list_segments)
    app.router.add_get("/cdp/segments/{name}", get_segment)
    app.router.add_put("/cdp/segments/{name}", put_segment)
    app.router.add_delete("/cdp/segments/{name}", delete_segment)
    app.router.add_get("/cdp/segments/{name}/members", segment_members)
