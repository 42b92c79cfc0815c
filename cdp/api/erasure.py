"""Erasure (the right to be forgotten) and suppression, behind the admin token.

``DELETE /cdp/profiles/{id}`` starts an erasure job (``cdp.erasure``: ordered,
idempotent steps, each in one slot, resumed by the sweeper after a crash), runs it
through its audit record (identifiers suppressed and unindexed, memberships ended with
EXIT events, every key of the profile deleted, one record in ``cdp:audit``) and answers
202 with the job; the purge of the person's events from ``cdp:events:dropped`` and
``cdp:events:dead``, and of the merge records about its profiles, goes on in the
background. Events naming a suppressed identifier are accepted and discarded (counted
in ``cdp_events_suppressed_total``), including those already buffered or pending,
until ``DELETE /cdp/suppressions/{id}`` lifts the suppression. ``GET /cdp/jobs/{id}``
tells the job's state.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import structlog
from aiohttp import web

from cdp import erasure, keys
from cdp.api.appkeys import CLOCK, REDIS, SETTINGS
from cdp.api.auth import admin
from cdp.api.requests import NotFound
from cdp.connect import Client
from cdp.errors import ProfileNotFound
from cdp.profiles import normalise, resolve
from cdp.scripts import Scripts
from cdp.settings import Settings
from cdp.streams import text

log = structlog.get_logger("cdp.erasure")

ERASE_ATTEMPTS = 3
JOBS = web.AppKey("erasure_jobs", set)
# The scripts bound to the app's client, once (binding every script costs ms).
SCRIPTS = web.AppKey("erasure_scripts", dict)


def _scripts(app: web.Application) -> Scripts:
    cache: dict[int, Scripts] = app[SCRIPTS]
    redis = app[REDIS]
    if id(redis) not in cache:
        cache[id(redis)] = Scripts(redis)
    return cache[id(redis)]


@admin
async def erase(request: web.Request) -> web.Response:
    redis, settings = request.app[REDIS], request.app[SETTINGS]
    scripts = _scripts(request.app)
    runner = f"api:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now = await request.app[CLOCK].now_ms()
    for _ in range(ERASE_ATTEMPTS):  # erased by another job meanwhile: resolve again
        try:
            cid = await resolve(redis, request.match_info["id"])
        except ProfileNotFound as exc:
            raise NotFound(str(exc)) from None
        job_id = uuid.uuid4().hex
        await erasure.start(redis, scripts, settings, job_id, cid, now, runner)
        result, job = await erasure.run(redis, scripts, settings, job_id, runner, "audited")
        if result != "gone":
            break
        await erasure.abandon(redis, job_id, "the profile no longer exists")
    else:
        raise NotFound(f"profile {cid!r} no longer exists")
    assert job is not None
    state: dict[str, Any] = {
        "id": job_id,
        "state": job.state,  # "purging"; "erasing" if another runner took the job over
        "canonicalId": job.cid,
        "createdAt": job.at_iso,
        "identifiers": job.identifiers,
        "exits": job.exits,
    }
    if result == "audited":
        task = asyncio.create_task(_finish(redis, scripts, settings, job_id, runner))
        request.app[JOBS].add(task)
        task.add_done_callback(request.app[JOBS].discard)
    return web.json_response(state | {"href": f"/cdp/jobs/{job_id}"}, status=202)


async def _finish(
    redis: Client, scripts: Scripts, settings: Settings, job_id: str, runner: str
) -> None:
    """The rest of the job (the purge); a failure leaves it open for the sweeper."""
    try:
        await erasure.run(redis, scripts, settings, job_id, runner)
    except Exception as exc:  # the job stays in cdp:erasures:open: the sweeper resumes it
        log.exception("erasure job interrupted", job=job_id)
        await redis.hset(keys.job(job_id), "error", str(exc))


@admin
async def get_job(request: web.Request) -> web.Response:
    raw = await request.app[REDIS].hgetall(keys.job(request.match_info["id"]))
    if not raw:
        raise NotFound(f"no job {request.match_info['id']!r} (jobs are kept 7 days)")
    stored = {text(k): text(v) for k, v in raw.items()}
    job: dict[str, Any] = {f: stored[f] for f in erasure.PUBLIC_FIELDS if f in stored}
    for field in ("identifiers", "exits", "purgedEvents"):
        if field in job:
            job[field] = int(job[field])
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
    app[SCRIPTS] = {}
    app.router.add_delete("/cdp/profiles/{id}", erase)
    app.router.add_get("/cdp/jobs/{id}", get_job)
    app.router.add_get("/cdp/suppressions", list_suppressions)
    app.router.add_delete("/cdp/suppressions/{id}", lift_suppression)
