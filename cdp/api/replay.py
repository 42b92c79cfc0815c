"""``POST /cdp/replay``: ``cdp replay`` over HTTP (admin).

The request is parsed by ``cdp.replay.ReplayRequest`` (the CLI's grammar) and run by
``cdp.replay.replay``: the dropped or parked records published again as imports, each
once. The answer is the counts and the first 1,000 records' outcomes.
"""

from __future__ import annotations

from aiohttp import web

from cdp.api.appkeys import REDIS, SETTINGS
from cdp.api.auth import admin
from cdp.api.requests import json_body
from cdp.replay import ReplayRequest, replay, since_ms


@admin
async def replay_records(request: web.Request) -> web.Response:
    """``cdp replay`` over HTTP: the counts, and the first 1,000 records' outcomes."""
    wanted = ReplayRequest.parse(await json_body(request))
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


def add_replay_routes(app: web.Application) -> None:
    app.router.add_post("/cdp/replay", replay_records)
