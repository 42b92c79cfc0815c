"""``cdp segments list`` and ``cdp segments watch``: segments from a terminal."""

from __future__ import annotations

import json
import sys

from redis.asyncio import Redis

from cdp import keys
from cdp.segments.definitions import load_segments
from cdp.settings import Settings


def _s(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def list_segments(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        segments = await load_segments(redis, settings)
        print(f"{'segment':24} {'members':>8}  rule")
        for name in sorted(segments):
            members = await redis.scard(keys.segment_members(name))
            kind = " (built in)" if segments[name].builtin else ""
            print(f"{name:24} {members:>8}  {json.dumps(segments[name].source)}{kind}")
    finally:
        await redis.aclose()


async def watch_segments(settings: Settings, start: str, only: set[str]) -> None:
    """Print each segment event as one JSON line, until interrupted."""
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    cursor = start
    try:
        if cursor == "$":
            last = await redis.xrevrange(keys.SEGMENT_EVENTS, count=1)
            cursor = _s(last[0][0]) if last else "0-0"
        while True:
            reply = await redis.xread({keys.SEGMENT_EVENTS: cursor}, count=100, block=5000)
            for entry_id, fields in reply[0][1] if reply else []:
                cursor = _s(entry_id)
                if only and _s(fields[b"segment"]) not in only:
                    continue
                print(_s(fields[b"e"]), flush=True)
    finally:
        await redis.aclose()
        sys.stdout.flush()
