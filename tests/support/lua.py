"""Drivers of the Lua scripts of ``lua/`` on fakeredis, for ``tests/lua/``.

``LuaHarness``: one isolated ``FakeServer`` with an async client (the scripts are
registered through ``cdp.scripts.Scripts`` and called through the real ``queue_apply``
in a pipeline, so the tests exercise the real argument encoding) and a sync client on
the same server for assertions. Events are XADDed to the partition stream and delivered
with XREADGROUP before they are applied, so XACK is observable. No pytest-asyncio: every
coroutine runs on the harness's own ``asyncio.Runner`` (``tests/lua/conftest.py`` makes
the harnesses: ``lua``, ``make_harness``).

The tests build their events with ``StreamEvent`` (the API's output; see
``tests.support.events``) and read state back through the harness (``cid``,
``traits``, ``counter``...) or the product's own ``read_profile``.

Time: the harness's ``now_ms`` (the workers' "now", as the injectable clock gives it;
``tests.support.values.NOW_MS`` by default) is a fixed instant, deliberately far from
fakeredis' wall clock: the scripts must not mix the two.

``apply_in_order``: a set of events applied through the apply script in random batches
and orders, in one stream or per partition, on a fresh server (the convergence tests).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import fakeredis
from redis.asyncio import Redis

from cdp import keys
from cdp.events import StreamEvent, stream_encoder
from cdp.identity import partition_of, routing_id
from cdp.metrics import counters_sync
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.profiles import read_profile
from cdp.scripts import BatchResult, Scripts, load_scripts
from cdp.settings import Settings
from tests.support.values import T0_MS

T = TypeVar("T")

# The "now" of apply_in_order: five minutes after the generated events' times.
AFTER_EVENTS_MS = T0_MS + 300_000


class LuaHarness:
    """One fresh fakeredis server, one partition, its consumer group and lease."""

    def __init__(
        self,
        runner: asyncio.Runner,
        now_ms: int,
        settings: Settings | None = None,
        partition: int = 0,
        worker_id: str = "w1",
    ) -> None:
        self.runner = runner
        self.now_ms = now_ms
        self.settings = settings or Settings()
        self.partition = partition
        self.worker_id = worker_id
        self.server = fakeredis.FakeServer()
        self.redis = fakeredis.FakeAsyncRedis(server=self.server)
        self.scripts = Scripts(self.redis)
        self.r = fakeredis.FakeRedis(server=self.server, decode_responses=True)
        self.stream = keys.stream(partition)
        self.r.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        self.r.set(keys.lease(partition), worker_id)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        self.run(self.redis.aclose())
        self.r.close()

    # -- the stream --------------------------------------------------------------

    def deliver(self, events: Iterable[StreamEvent]) -> list[tuple[str, StreamEvent]]:
        """XADD each event (one entry each, duplicates included), then XREADGROUP them."""
        events = list(events)
        for ev in events:
            self.r.xadd(self.stream, {"e": stream_encoder.encode(ev)})
        read = self.r.xreadgroup(keys.GROUP, "consumer", {self.stream: ">"})
        entries = read[0][1] if read else []
        assert len(entries) == len(events)
        # The stream keeps XADD order, so entry i is event i.
        return [(entry_id, ev) for (entry_id, _), ev in zip(entries, events, strict=True)]

    def pending(self) -> int:
        return int(self.r.xpending(self.stream, keys.GROUP)["pending"])

    # -- the apply script ----------------------------------------------------------

    def apply_entries(
        self,
        batch: list[tuple[str, StreamEvent]],
        now_ms: int | None = None,
        worker_id: str | None = None,
    ) -> BatchResult:
        ctx = ApplyContext(
            now_ms=self.now_ms if now_ms is None else now_ms,
            worker_id=self.worker_id if worker_id is None else worker_id,
        )

        async def call() -> Any:
            async with self.redis.pipeline(transaction=False) as pipe:
                await queue_apply(pipe, self.scripts, self.settings, ctx, self.partition, batch)
                (reply,) = await pipe.execute()
            return reply

        return BatchResult.decode(self.run(call()))

    def apply(
        self,
        *events: StreamEvent,
        now_ms: int | None = None,
        worker_id: str | None = None,
    ) -> BatchResult:
        """Deliver these events through the stream and apply them in one call."""
        return self.apply_entries(self.deliver(events), now_ms=now_ms, worker_id=worker_id)

    # -- reading state back --------------------------------------------------------

    def cid(self, typed_identifier: str) -> str | None:
        return self.r.get(keys.identifier(typed_identifier))

    def traits(self, cid: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.r.hgetall(keys.traits(cid)).items()}

    def trait_values(self, cid: str) -> dict[str, Any]:
        return {k: cell["v"] for k, cell in self.traits(cid).items()}

    def identifiers(self, cid: str) -> set[str]:
        return set(self.r.smembers(keys.identifiers(cid)))

    def meta(self, cid: str) -> dict[str, str]:
        return self.r.hgetall(keys.profile(cid))

    def counter(self, cid: str, name: str) -> dict[str, int]:
        rows = self.r.zrange(keys.counter(cid, name), 0, -1, withscores=True)
        return {member: int(score) for member, score in rows}

    def counter_names(self, cid: str) -> set[str]:
        return set(self.r.hkeys(keys.counters(cid)))

    def metric(self, name: str) -> int:
        return counters_sync(self.r, max(self.settings.partitions, self.partition + 1), [name])[
            name
        ]

    def merges(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.r.xrange(keys.MERGES)]

    def profile_ids(self) -> list[str]:
        """Every canonical id that has an identifier set."""
        out = []
        for key in self.r.scan_iter(match=keys.PROFILE_PREFIX + "*:identifiers"):
            out.append(key[len(keys.PROFILE_PREFIX) + 1 : -len("}:identifiers")])
        return sorted(out)

    def read_profile(self, identifier: str) -> dict[str, Any]:
        return self.run(read_profile(self.redis, identifier))

    def dump(self) -> dict[str, Any]:
        """Every key with its type, value and expiry time: to prove a call changed nothing."""
        out: dict[str, Any] = {}
        for key in sorted(self.r.keys("*")):
            kind = self.r.type(key)
            if kind == "string":
                value: Any = self.r.get(key)
            elif kind == "hash":
                value = self.r.hgetall(key)
            elif kind == "set":
                value = sorted(self.r.smembers(key))
            elif kind == "zset":
                value = self.r.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = (self.r.xrange(key), self.pending() if key == self.stream else None)
            else:  # pragma: no cover - the scripts write no other type
                value = kind
            out[key] = (kind, value, self.r.pexpiretime(key))
        return out


def apply_in_order(
    events: list[StreamEvent], rng: random.Random, split: bool, shuffle: bool = True
) -> fakeredis.FakeRedis:
    """Apply ``events`` through ``apply_batch`` in random batches; returns a sync client.

    ``shuffle``: in a random order; otherwise in (ts, eventId) order, as one worker would.
    """
    settings = Settings()
    server = fakeredis.FakeServer()
    calls = plan_calls(events, rng, split, shuffle, settings.partitions)

    async def run() -> None:
        redis = fakeredis.FakeAsyncRedis(server=server)
        scripts = Scripts(redis)
        ctx = ApplyContext(now_ms=AFTER_EVENTS_MS, worker_id="")
        for n, (partition, chunk) in enumerate(calls):
            async with redis.pipeline(transaction=False) as pipe:
                batch = [(f"0-{n * 10 + i + 1}", ev) for i, ev in enumerate(chunk)]
                await queue_apply(pipe, scripts, settings, ctx, partition, batch)
                await pipe.execute()
        await redis.aclose()

    asyncio.run(run())
    return fakeredis.FakeRedis(server=server, decode_responses=True)


def plan_calls(
    events: list[StreamEvent], rng: random.Random, split: bool, shuffle: bool, partitions: int
) -> list[tuple[int, list[StreamEvent]]]:
    """``events`` cut into calls (partition, events): in a random order (``shuffle``)
    or in (ts, eventId) order; ``split``: per partition, the partitions interleaved at
    random as several workers would, 1-4 events a call; else one stream, 1-6 a call."""
    order = events[:]
    if shuffle:
        rng.shuffle(order)
    else:
        order.sort(key=lambda e: (e.ts, e.eventId))
    calls: list[tuple[int, list[StreamEvent]]] = []
    if split:
        queues: dict[int, list[StreamEvent]] = {}
        for ev in order:
            p = partition_of(routing_id(ev.userId, ev.anonymousId, ev.email), partitions)
            queues.setdefault(p, []).append(ev)
        while queues:
            p = rng.choice(sorted(queues))
            size = rng.randint(1, 4)
            calls.append((p, queues[p][:size]))
            queues[p] = queues[p][size:]
            if not queues[p]:
                del queues[p]
    else:
        while order:
            size = rng.randint(1, 6)
            calls.append((0, order[:size]))
            order = order[size:]
    return calls


def run_with_scripts(make: Callable[[Redis], Awaitable[Any]], url: str) -> Any:
    """``make(redis)`` on a fresh client of the real Redis at ``url``, the scripts loaded."""

    async def go() -> Any:
        redis = Redis.from_url(url)
        try:
            await load_scripts(redis)
            return await make(redis)
        finally:
            await redis.aclose()

    return asyncio.run(go())
