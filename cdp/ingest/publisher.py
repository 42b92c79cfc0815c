"""Coalesced XADDs: concurrent requests share one pipeline round trip.

``publish(event)`` resolves once Redis has stored the event in its partition stream
(``cdp:events:{pN}``, field ``e`` = the event's JSON). Requests arriving while a
pipeline is in flight are queued and sent together in the next one, so a burst of
concurrent requests costs a few round trips instead of one each.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis

from cdp import keys
from cdp.errors import EventRejected
from cdp.events import StreamEvent, stream_encoder
from cdp.identity import partition_of, routing_id


class Publisher:
    def __init__(self, redis: Redis, partitions: int, max_batch: int = 500) -> None:
        self._redis = redis
        self._partitions = partitions
        self._max_batch = max_batch
        self._queue: list[tuple[str, bytes, asyncio.Future[str]]] = []
        self._task: asyncio.Task[None] | None = None

    def partition(self, event: StreamEvent) -> int:
        return partition_of(
            routing_id(event.userId, event.anonymousId, event.email), self._partitions
        )

    async def publish(self, event: StreamEvent) -> str:
        """XADD the event to its partition; returns the stream entry id."""
        return (await self.publish_many([event]))[0]

    async def publish_many(self, events: list[StreamEvent]) -> list[str]:
        """XADD several events; all or none (an error fails the whole call)."""
        try:  # all encoded before any is queued: a bad one publishes none
            bodies = [stream_encoder.encode(event) for event in events]
        except UnicodeEncodeError:
            raise EventRejected(
                "a string holds a lone UTF-16 surrogate (an emoji cut in half?)"
            ) from None
        loop = asyncio.get_running_loop()
        futures = []
        for event, body in zip(events, bodies, strict=True):
            future: asyncio.Future[str] = loop.create_future()
            self._queue.append((keys.stream(self.partition(event)), body, future))
            futures.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_loop())
        return list(await asyncio.gather(*futures))

    async def _flush_loop(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for stream, body, _ in batch:
                        pipe.xadd(stream, {"e": body})
                    pipe.hincrby(keys.METRICS, "accepted", len(batch))
                    *ids, _ = await pipe.execute()
            except Exception as exc:  # every waiter learns of it; none is left hanging
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), entry_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(
                        entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    )

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
