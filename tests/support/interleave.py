"""Deterministic interleavings of segment evaluators, against a real redis-server.

``GatedRedis`` is a ``redis.asyncio.Redis`` whose pipelines wait at a ``Gate`` before they
execute, but the engine's read (the pipeline that starts with the due index's
ZMSCORE): the engine writes its transitions in one pipeline after it has read and
decided, so an evaluator started with a gated client stops exactly between its read and
its write, and the test decides what happens meanwhile (other evaluators, applies) and
when it may write. ``Evaluator`` drives one ``SegmentEngine.evaluate`` call that way.

``HookedRedis`` runs a callback after each of its round trips: what an operation made
of several round trips (deleting a segment) is raced against.

``apply_events`` applies events with the real apply script (through ``queue_apply``),
as a worker's tick does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from cdp import keys
from cdp.events import StreamEvent, stream_encoder
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.scripts import BatchResult, Scripts
from cdp.segments.engine import SegmentEngine
from cdp.settings import Settings
from workers.housekeeping import ensure_groups


class Gate:
    """Pipelines of a GatedRedis wait here until ``release``; ``arrived`` says one waits."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self._open = asyncio.Event()
        self.passed = 0

    async def wait(self) -> None:
        self.arrived.set()
        await self._open.wait()
        self._open.clear()
        self.passed += 1

    def release(self) -> None:
        self.arrived.clear()
        self._open.set()


class GatedRedis(Redis):
    gate: Gate

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute
        gate = self.gate

        async def gated(raise_on_error: bool = True) -> list[Any]:
            if not _is_read(pipe):
                await gate.wait()
            return await execute(raise_on_error)

        pipe.execute = gated  # type: ignore[method-assign]
        return pipe


def _is_read(pipe: Pipeline) -> bool:
    """The engine's read: its due scores (ZMSCORE), then ``profile_view``."""
    stack = pipe.command_stack
    return bool(stack) and str(stack[0][0][0]).upper() == "ZMSCORE"


class HookedRedis(Redis):
    """A client that awaits ``after(n)`` after its n-th round trip (a command, a script
    call or a pipeline): to make something land between two steps of a multi-step
    operation, whatever steps it is made of."""

    after: Callable[[int], Awaitable[None]]
    round_trips: int = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = await super().execute_command(*args, **options)
        await self._tick()
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def hooked(raise_on_error: bool = True) -> list[Any]:
            replies = await execute(raise_on_error)
            await self._tick()
            return replies

        pipe.execute = hooked  # type: ignore[method-assign]
        return pipe

    async def _tick(self) -> None:
        self.round_trips += 1
        await self.after(self.round_trips)


def hooked_client(url: str, after: Callable[[int], Awaitable[None]]) -> HookedRedis:
    client = HookedRedis.from_url(url)
    client.after = after
    return client


def gated_client(url: str) -> GatedRedis:
    client = GatedRedis.from_url(url)
    client.gate = Gate()
    return client


class Evaluator:
    """One ``SegmentEngine`` on a gated client: ``start`` runs ``evaluate(cids, now)`` up to
    its write (or to its end, when it has nothing to write); ``commit`` lets the write
    go and runs to the next gate (a retry after a refusal) or to the end."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.redis = gated_client(url)
        self.engine = SegmentEngine(self.redis, Scripts(self.redis), settings)
        self.task: asyncio.Task[list[str]] | None = None

    async def start(self, cids: Iterable[str], now_ms: int) -> None:
        assert self.idle, "this evaluator is already running"
        self.task = asyncio.create_task(self.engine.evaluate(list(cids), now_ms))
        await self._settle()

    async def commit(self) -> None:
        assert self.waiting, "nothing to commit"
        self.redis.gate.release()
        await self._settle()

    async def finish(self) -> None:
        while self.waiting:
            await self.commit()
        if self.task is not None:
            await self.task

    @property
    def waiting(self) -> bool:
        return self.task is not None and not self.task.done() and self.redis.gate.arrived.is_set()

    @property
    def idle(self) -> bool:
        return self.task is None or self.task.done()

    async def _settle(self) -> None:
        assert self.task is not None
        arrived = asyncio.ensure_future(self.redis.gate.arrived.wait())
        try:
            await asyncio.wait({self.task, arrived}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrived.cancel()
        if self.task.done():
            self.task.result()  # raises what the evaluation raised

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        await self.redis.aclose()


async def apply_events(
    redis: Redis, settings: Settings, now_ms: int, events: Iterable[StreamEvent]
) -> BatchResult:
    """XADD the events to partition 0, read them with the group, apply them in one call
    (sorted by (ts, eventId), as a tick does), without a lease check."""
    await ensure_groups(redis, 1)
    stream = keys.stream(0)
    ordered = sorted(events, key=lambda e: (e.ts, e.eventId))
    for ev in ordered:
        await redis.xadd(stream, {"e": stream_encoder.encode(ev)})
    read: Any = await redis.xreadgroup(keys.GROUP, "tests", {stream: ">"})
    entries = read[0][1] if read else []
    assert len(entries) == len(ordered)
    batch = [
        (eid.decode() if isinstance(eid, bytes) else eid, ev)
        for (eid, _), ev in zip(entries, ordered, strict=True)
    ]
    async with redis.pipeline(transaction=False) as pipe:
        await queue_apply(pipe, Scripts(redis), settings, ApplyContext(now_ms, ""), 0, batch)
        (reply,) = await pipe.execute()
    return BatchResult.decode(reply)
