"""Erasure (the right to be forgotten) and suppression, behind the admin token.

``DELETE /cdp/profiles/{id}`` answers 202 with a job id. The job erases the profile
atomically (``lua/erase_profile-0.lua``: identifiers suppressed and unindexed,
memberships ended with EXIT events, every key of the profile deleted, an audit record
in ``cdp:audit``), then removes the person's events from ``cdp:events:dropped`` and
``cdp:events:dead``, and the merge records about its profiles. Events naming a
suppressed identifier are accepted and discarded (counted in
``cdp_events_suppressed_total``), including those already buffered or pending, until
``DELETE /cdp/suppressions/{id}`` lifts the suppression. ``GET /cdp/jobs/{id}`` tells
the job's state.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import structlog
from aiohttp import web

from cdp import keys
from cdp.api.appkeys import CLOCK, REDIS, SETTINGS
from cdp.api.auth import admin
from cdp.api.requests import NotFound
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.errors import ProfileNotFound
from cdp.events import iso_ms
from cdp.identity import typed_identifiers
from cdp.profiles import normalise, resolve
from cdp.scripts import Scripts
from cdp.streams import text

log = structlog.get_logger("cdp.erasure")

JOB_TTL_S = 7 * 86_400
ERASE_ATTEMPTS = 3
PURGE_CHUNK = 1000
JOBS = web.AppKey("erasure_jobs", set)


@admin
async def erase(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    job_id = uuid.uuid4().hex
    now = await request.app[CLOCK].now_ms()
    for _ in range(ERASE_ATTEMPTS):  # a merge between resolve and erase: resolve again
        try:
            cid = await resolve(redis, request.match_info["id"])
        except ProfileNotFound as exc:
            raise NotFound(str(exc)) from None
        identifiers = sorted(text(i) for i in await redis.smembers(keys.identifiers(cid)))
        cids = {cid} | {text(c) for c in await redis.smembers(keys.merged(cid))}
        reply = await Scripts(redis).erase_profile(
            cid=cid,
            now_iso=iso_ms(now),
            job_id=job_id,
            requested_by="admin",
            events_maxlen=request.app[SETTINGS].segment_events_maxlen,
        )
        if reply.status != "GONE":
            break
    else:
        raise NotFound(f"profile {cid!r} no longer exists")
    state: dict[Any, Any] = {
        "id": job_id,
        "state": "purging",
        "canonicalId": cid,
        "createdAt": iso_ms(now),
        "identifiers": reply.identifiers,
        "exits": reply.exits,
    }
    await redis.hset(keys.job(job_id), mapping=state)
    await redis.expire(keys.job(job_id), JOB_TTL_S)
    task = asyncio.create_task(_purge(redis, job_id, set(identifiers), cids))
    request.app[JOBS].add(task)
    task.add_done_callback(request.app[JOBS].discard)
    return web.json_response(state | {"href": f"/cdp/jobs/{job_id}"}, status=202)


async def _purge(redis: Client, job_id: str, identifiers: set[str], cids: set[str]) -> None:
    """Delete the erased person's events and merge records (dropped, dead, merges)."""
    removed = 0
    try:
        for stream in (keys.DROPPED, keys.DEAD, keys.MERGES):
            cursor = "-"
            while True:
                entries: Any = await redis.xrange(stream, cursor, "+", count=PURGE_CHUNK)
                if not entries:
                    break
                doomed = [eid for eid, fields in entries if _names(fields, identifiers, cids)]
                if doomed:
                    removed += await redis.xdel(stream, *doomed)
                if len(entries) < PURGE_CHUNK:
                    break
                cursor = "(" + text(entries[-1][0])
        await redis.hset(
            keys.job(job_id),
            mapping={
                "state": "done",
                "purgedEvents": removed,
                "finishedAt": iso_ms(wall_ms()),
            },
        )
    except Exception as exc:  # recorded on the job; the erasure itself is already done
        log.exception("erasure purge failed", job=job_id)
        await redis.hset(keys.job(job_id), mapping={"state": "failed", "error": str(exc)})


def _names(fields: dict[bytes, bytes], identifiers: set[str], cids: set[str]) -> bool:
    """Does a dropped/dead event, or a merge record, concern the erased person?"""
    if b"status" in fields:  # a record of cdp:merges
        named = {text(fields[f]) for f in (b"profile", b"survivor", b"merged") if f in fields}
        return bool(named & cids) or text(fields.get(b"identifier", b"")) in identifiers
    try:
        event = json.loads(fields.get(b"e") or b"{}")
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    user, anon, email = (
        v if isinstance(v, str) else None
        for v in (event.get("userId"), event.get("anonymousId"), event.get("email"))
    )
    return bool(set(typed_identifiers(user, anon, email)) & identifiers)


@admin
async def get_job(request: web.Request) -> web.Response:
    raw = await request.app[REDIS].hgetall(keys.job(request.match_info["id"]))
    if not raw:
        raise NotFound(f"no job {request.match_info['id']!r} (jobs are kept 7 days)")
    job = {text(k): text(v) for k, v in raw.items()}
    for field in ("identifiers", "exits", "purgedEvents"):
        if field in job:
            job[field] = int(job[field])  # type: ignore[assignment]
    return web.json_response(job)


@admin
async def list_suppressions(request: web.Request) -> web.Response:
    members = await request.app[REDIS].smembers(keys.SUPPRESSED)
    return web.json_response({"suppressed": sorted(text(m) for m in members)})


@admin
async def lift_suppression(request: web.Request) -> web.Response:
    try:
        identifier = normalise(request.match_info["id"])
    except ProfileNotFound as exc:
        raise NotFound(str(exc)) from None
    if not await request.app[REDIS].srem(keys.SUPPRESSED, identifier):
        raise NotFound(f"{identifier!r} is not suppressed")
    return web.Response(status=204)


def add_erasure_routes(app: web.Application) -> None:
    app[JOBS] = set()
    app.router.add_delete("/cdp/profiles/{id}", erase)
    app.router.add_get("/cdp/jobs/{id}", get_job)
    app.router.add_get("/cdp/suppressions", list_suppressions)
    app.router.add_delete("/cdp/suppressions/{id}", lift_suppression)
