"""Reading streams the way several readers need it: from an id, or from "now".

``tail`` yields ``(entry id, fields)`` after ``cursor`` forever, blocking between
batches (an idle ``None`` every ``block_ms`` lets callers send keep-alives; the
client's socket timeout must exceed ``block_ms``, see ``cdp.connect.redis_client``);
``last_id`` is where "from now" starts. Used by the SSE endpoint and ``cdp segments
watch``.

``add_once`` writes records to a stream at most once each within ``keep_ms``, named by
the caller (marks in a zset of the stream's slot: ``keys.record_marks``): the first of
two ordered steps whose second (an acknowledgement, a cursor) is in another slot of a
cluster, so that a crash between them, followed by a second run, adds nothing twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from cdp import keys
from cdp.clock import wall_ms
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


async def add_once(
    redis: Client,
    stream: str,
    records: list[tuple[str, dict[Any, Any]]],
    maxlen: int,
    keep_ms: int,
) -> int:
    """XADD each ``(name, fields)`` of ``records`` whose name is not marked yet, and mark
    it, in one transaction (the marks share the stream's slot); marks older than
    ``keep_ms`` are forgotten. Returns how many were added.

    Two writers adding the same name at the same instant may both add it (the check is
    a read before the transaction): once each is what a crash and a retry get.
    """
    marks = keys.record_marks(stream)
    known = await redis.zmscore(marks, [name for name, _ in records])
    now = wall_ms()
    added = 0
    async with redis.pipeline(transaction=True) as pipe:
        for (name, fields), mark in zip(records, known, strict=True):
            if mark is None:
                pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
                pipe.zadd(marks, {name: now})
                added += 1
        pipe.zremrangebyscore(marks, "-inf", now - keep_ms)
        await pipe.execute()
    return added
