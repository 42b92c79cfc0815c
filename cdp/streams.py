"""Reading streams the way several readers need it: from an id, or from "now".

``tail`` yields ``(entry id, fields)`` after ``cursor`` forever, blocking between
batches (an idle ``None`` every ``block_ms`` lets callers send keep-alives; the
client's socket timeout must exceed ``block_ms``, see ``cdp.connect.redis_client``);
``last_id`` is where "from now" starts. Used by the SSE endpoint and ``cdp segments
watch``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from cdp.connect import Client

Entry = tuple[str, dict[bytes, bytes]]


def text(raw: Any) -> str:
    """A reply from redis-py (bytes, or str with decode_responses) as str."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def last_id(redis: Client, stream: str) -> str:
    """The id of the newest entry, or 0-0 for an empty stream."""
    last: Any = await redis.xrevrange(stream, count=1)
    return text(last[0][0]) if last else "0-0"


async def tail(
    redis: Client, stream: str, cursor: str, block_ms: int
) -> AsyncIterator[Entry | None]:
    """Entries after ``cursor`` ("$": after the newest now), and None when idle."""
    if cursor == "$":
        cursor = await last_id(redis, stream)
    while True:
        reply: Any = await redis.xread({stream: cursor}, count=100, block=block_ms)
        if not reply:
            yield None
            continue
        for entry_id, fields in reply[0][1]:
            cursor = text(entry_id)
            yield cursor, fields
