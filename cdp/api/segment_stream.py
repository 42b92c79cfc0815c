"""``GET /cdp/segment-events/stream``: the live ENTER/EXIT events as Server-Sent Events.

Admin. It starts from ``Last-Event-ID`` (a reconnecting client), else the ``from``
query parameter, else now, and may keep only the events of the ``segment``
parameters. Each client tails ``cdp:segment-events`` on its own Redis connection,
blocking one heartbeat interval at a time, so an idle stream still sends a comment
every interval. A Redis failure ends the stream cleanly (the client reconnects with
Last-Event-ID); shutting the API down ends every open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from cdp import keys
from cdp.api.appkeys import REDIS, SETTINGS, TROUBLE
from cdp.api.auth import admin
from cdp.connect import is_cluster, redis_client
from cdp.errors import EventRejected
from cdp.streams import last_id, tail, text

# A start id for XREAD (both parts fit in 64 bits); also in the OpenAPI document.
STREAM_ID = re.compile(r"^(\$|[0-9]{1,19}(-[0-9]{1,19})?)$")
OPEN_STREAMS = web.AppKey("open_streams", set[asyncio.Task[Any]])


@admin
async def stream_segment_events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of cdp:segment-events, from Last-Event-ID or from now."""
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
    cluster = is_cluster(request.app[REDIS])
    redis = redis_client(settings, cluster=cluster, blocking_ms=heartbeat_ms)
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


def add_segment_stream_routes(app: web.Application) -> None:
    app[OPEN_STREAMS] = set()
    app.on_shutdown.append(close_streams)
    app.router.add_get("/cdp/segment-events/stream", stream_segment_events)
