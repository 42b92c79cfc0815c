"""Admin profile routes: one profile by any identifier, its parts, pages, NDJSON export.

Every route is an admin route (``@admin``: the admin token is checked before anything
else). ``{id}`` is ``user:<userId>``, ``anon:<anonymousId>``, ``email:<address>``
(normalised like events' identifiers) or a canonical id ``p<N>``; one merged away
answers its survivor. The document is ``read_profile``'s plus
``segments`` (``cdp.profiles.read_profiles``). Identifiers containing ``/`` are written
``%2F`` in the path.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from cdp.api.appkeys import REDIS
from cdp.api.auth import Handler, admin
from cdp.api.requests import PAGE_MAX, Conflict, NotFound, int_param
from cdp.errors import EventRejected, ProfileNotFound
from cdp.export import ndjson_chunks
from cdp.profiles import read_page, read_resolved

log = structlog.get_logger("cdp.api")

# A typed identifier or a canonical id (also the OpenAPI document's pattern for {id}).
PROFILE_ID = re.compile(r"^((user|anon|email):[\s\S]*\S[\s\S]*|p[0-9]+)$")


def _identifier(request: web.Request) -> str:
    raw = request.match_info["id"]
    if PROFILE_ID.fullmatch(raw):
        return raw
    raise EventRejected(
        f"{raw!r} is not a profile identifier: use user:<userId>, anon:<anonymousId>, "
        "email:<address> or a canonical id such as p12"
    )


async def _document(request: web.Request, counters: bool = True) -> dict[str, Any]:
    identifier = _identifier(request)
    redis = request.app[REDIS]
    try:
        doc = await read_resolved(redis, identifier, counters=counters)
    except ProfileNotFound as exc:
        raise NotFound(str(exc)) from None
    if doc is None:
        raise Conflict(f"the profile of {identifier!r} is being merged; retry")
    return doc


@admin
async def get_profile(request: web.Request) -> web.Response:
    return web.json_response(await _document(request))


def _part(*fields: str) -> Handler:
    @admin
    async def get_part(request: web.Request) -> web.Response:
        doc = await _document(request, counters=False)
        return web.json_response({"canonicalId": doc["canonicalId"]} | {f: doc[f] for f in fields})

    return get_part


@admin
async def list_profiles(request: web.Request) -> web.Response:
    cursor = int_param(request, "cursor", 0, 0, None)
    limit = int_param(request, "limit", 100, 1, PAGE_MAX)
    docs, next_cursor = await read_page(request.app[REDIS], cursor, limit)
    return web.json_response(
        {"profiles": docs, "cursor": None if next_cursor is None else str(next_cursor)}
    )


@admin
async def export_ndjson(request: web.Request) -> web.StreamResponse:
    """Every live profile, one JSON document per line, streamed a chunk at a time.

    A failure after the first byte cannot become an error status any more: the
    connection is closed without the final chunk, so the client sees a truncated
    transfer rather than a complete-looking file.
    """
    redis = request.app[REDIS]
    chunks = ndjson_chunks(redis)
    first = await anext(chunks, b"")  # errors before any byte are ordinary 4xx/503 answers
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        await response.write(first)
        async for block in chunks:
            await response.write(block)
    except ConnectionResetError:
        log.info("export: the client went away")
    except RedisError as exc:
        log.warning("export interrupted", error=str(exc))
        if request.transport is not None:
            request.transport.close()
    finally:
        await chunks.aclose()
    return response


def add_profile_routes(app: web.Application) -> None:
    app.router.add_get("/cdp/profiles", list_profiles)
    app.router.add_get("/cdp/profiles:export", export_ndjson)
    app.router.add_get("/cdp/profiles/{id}", get_profile)
    app.router.add_get("/cdp/profiles/{id}/traits", _part("traits", "tombstones"))
    app.router.add_get("/cdp/profiles/{id}/identifiers", _part("identifiers"))
    app.router.add_get("/cdp/profiles/{id}/segments", _part("segments"))
