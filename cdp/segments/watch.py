"""``cdp segments list`` and ``cdp segments watch``: segments from a terminal."""

from __future__ import annotations

import json

from cdp import keys
from cdp.connect import connect
from cdp.segments.definitions import load_segments
from cdp.settings import Settings
from cdp.streams import tail, text


async def list_segments(settings: Settings) -> None:
    redis = await connect(settings, socket_connect_timeout=2)
    try:
        segments = await load_segments(redis, settings)
        print(f"{'segment':24} {'members':>8}  rule")
        for name in sorted(segments):
            members = await redis.zcard(keys.segment_members(name))
            kind = " (built in)" if segments[name].builtin else ""
            print(f"{name:24} {members:>8}  {json.dumps(segments[name].source)}{kind}")
    finally:
        await redis.aclose()


async def watch_segments(settings: Settings, start: str, only: set[str]) -> None:
    """Print each segment event as one JSON line, until interrupted (idle for hours too)."""
    block_ms = settings.stream_heartbeat_ms  # within the socket timeout, see cdp.connect
    redis = await connect(settings, socket_timeout=(settings.redis_timeout_ms + block_ms) / 1000)
    try:
        async for item in tail(redis, keys.SEGMENT_EVENTS, start, block_ms=block_ms):
            if item is None:
                continue
            _, fields = item
            if not only or text(fields[b"segment"]) in only:
                print(text(fields[b"e"]), flush=True)
    finally:
        await redis.aclose()
