"""Coalesced publishing: concurrent requests share one pipeline round trip.

``publish_many(events)`` resolves once Redis has stored the request's events in their
partition streams and counted them in ``accepted`` (each partition's metrics hash), or
raises the Redis error that kept them out. A request makes one entry per partition it
touches (``entries``): field ``e`` = the event's JSON when that partition gets one
event, field ``b`` = a JSON array of its events, in the request's order, when it gets
several; each event is answered with the id of the entry that holds it (several may
share one). On one Redis each request is one call of ``lua/publish-n.lua``, so its
events are stored and counted together or not at all (under OOM too), and its answer is
its own script's reply: one failing request never fails another. On a cluster a
script's keys must be one slot: each entry is a call of its own (its stream and its
partition's metrics share the partition's slot), so a request spanning partitions may
be stored for some and refused for others: it is answered ``PartlyStored`` (the API
answers 500, naming the stored events; a retry with the same ids is deduplicated).
Requests arriving while a pipeline is in flight are queued and sent together in the
next one, so a burst costs a few round trips.

With ``min_replicas`` (the ``ingest-min-replicas`` setting), each round trip ends with
``WAIT min_replicas timeout`` on the connection that carried its writes (a pipeline is
one connection to one Redis; on a cluster, one WAIT per node written to, routed to that
node's connection with redis-py's ``target_nodes``): a request is answered once its
events reached that many replicas, else with ``NotReplicated`` (the API answers 503: the
primary holds them, a retry with the same id is deduplicated). A write redirected to
another node (MOVED during resharding) is not covered by its node's WAIT: the round
trip then counts as not replicated.

When a round trip fails as a whole (timeout, connection lost), what Redis did with
that pipeline is unknown: its requests fail with ``OutcomeUnknown`` (the API answers
504: retry with the same id), unless the connection was never made (the Redis error:
503, nothing stored). Redis is not answering, so the requests queued behind it fail at
once, unsent, with the Redis error (503), instead of each waiting out the same timeout
in turn. So while Redis hangs every request is answered within about ``redis-timeout``.

While the console's debugger is open (``tap.watching``), a stored request's events
are also handed to the debugger's tap (``cdp.api.tap``), which copies them later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cdp import keys
from cdp.api.tap import DebuggerTap
from cdp.connect import Client, Pipe
from cdp.errors import EventRejected, NotReplicated, OutcomeUnknown, PartlyStored
from cdp.events import StreamEvent, stream_encoder
from cdp.identity import partition_of, routing_id
from cdp.scripts import source
from cdp.streams import text


@dataclass(frozen=True, slots=True)
class Entries:
    """A request's events grouped into one stream entry per partition."""

    partitions: list[int]  # of each entry, in the order of their first event
    fields: list[tuple[str, bytes]]  # of each entry: ("e", event) or ("b", [events...])
    of_event: list[int]  # the entry of each event, in the request's order


def entries(partitions: list[int], bodies: list[bytes]) -> Entries:
    """Group a request's events (each event's partition and JSON) by partition."""
    index: dict[int, int] = {}
    grouped: list[list[bytes]] = []
    of_event: list[int] = []
    for p, body in zip(partitions, bodies, strict=True):
        i = index.get(p)
        if i is None:
            i = index[p] = len(grouped)
            grouped.append([])
        grouped[i].append(body)
        of_event.append(i)
    fields = [("e", g[0]) if len(g) == 1 else ("b", b"[" + b",".join(g) + b"]") for g in grouped]
    return Entries(list(index), fields, of_event)


@dataclass(slots=True)
class _Request:
    """The calls of the publish script for one request, and who waits for them: one
    call on a single Redis; on a cluster one per entry (its two keys are one slot)."""

    entries: Entries
    answer: asyncio.Future[list[str]]
    calls: int = 1  # how many script calls carry it, once queued

    @property
    def size(self) -> int:
        return len(self.entries.of_event)

    def queue_on(self, pipe: Any, sha: str, per_entry: bool) -> int:
        """EVALSHA publish-n: KEYS = each entry's stream and its partition's metrics
        hash, ARGV = each entry's field, value and number of events; all the entries
        in one call, or (``per_entry``) one call each. Returns the calls queued."""
        counts = [0] * len(self.entries.partitions)
        for i in self.entries.of_event:
            counts[i] += 1
        names: list[str] = []
        args: list[Any] = []
        self.calls = 0
        for p, (field, value), n in zip(
            self.entries.partitions, self.entries.fields, counts, strict=True
        ):
            names += (keys.stream(p), keys.metrics(p))
            args += (field, value, n)
            if per_entry:
                pipe.evalsha(sha, len(names), *names, *args)
                self.calls += 1
                names, args = [], []
        if names:
            pipe.evalsha(sha, len(names), *names, *args)
            self.calls += 1
        return self.calls

    def fail(self, exc: BaseException) -> None:
        """Answer with ``exc`` (the round trip failed as a whole)."""
        self.settle([exc] * self.calls)

    def settle(self, replies: list[Any]) -> None:
        """Answer from the replies of its calls: the entry ids when every call stored
        its entries; the error when none did; ``PartlyStored`` when some did."""
        if self.answer.done():  # its waiter was cancelled
            return
        if any(not isinstance(r, Exception) and isinstance(r, BaseException) for r in replies):
            self.answer.cancel()  # the flush was cancelled (shutdown)
            return
        refused = [r for r in replies if isinstance(r, Exception) and not _stored(r)]
        if refused and len(refused) < len(replies):
            self.answer.set_exception(self._partly(replies, refused[0]))
        elif refused:
            self.answer.set_exception(refused[0])
        elif failed := [r for r in replies if isinstance(r, Exception)]:
            self.answer.set_exception(failed[0])  # stored, not replicated
        else:
            ids = [text(i) for reply in replies for i in reply]
            self.answer.set_result([ids[i] for i in self.entries.of_event])

    def _partly(self, replies: list[Any], cause: Exception) -> PartlyStored:
        """Which of the request's events were stored, from its per-entry replies."""
        kept = {i for i, reply in enumerate(replies) if not isinstance(reply, Exception)}
        kept |= {i for i, reply in enumerate(replies) if isinstance(reply, NotReplicated)}
        stored = [n for n, entry in enumerate(self.entries.of_event) if entry in kept]
        return PartlyStored(
            f"{len(stored)} of {self.size} events stored; the others were refused: "
            f"{cause}. Retry the request with the same messageId/eventId: the stored ones "
            "are deduplicated",
            stored,
        )


def _stored(reply: Exception) -> bool:
    """Did the call answered ``reply`` store its entries (only replication is missing)?"""
    return isinstance(reply, NotReplicated)


def _maybe_executed(exc: Exception) -> bool:
    """Could Redis have run a round trip that failed with ``exc``?

    Only a connection that was never made (refused, unresolvable, timed out while
    connecting) proves it did not; a timeout or a connection lost mid-reply leaves it
    unknown. redis-py tells the two apart only in its message ("... connecting to ...").
    """
    never_sent = isinstance(exc, RedisConnectionError | RedisTimeoutError)
    return not (never_sent and "connecting to" in str(exc))


class Publisher:
    def __init__(
        self,
        redis: Client,
        partitions: int,
        max_batch: int = 500,
        *,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self._partitions = partitions
        self._replicas = (min_replicas, replica_timeout_ms)
        self._max_batch = max_batch  # events per round trip (a request is never split)
        self._script = source("publish")
        self._sha = redis.register_script(self._script).sha
        self._queue: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self.tap: DebuggerTap | None = None  # the console's debugger (cdp.api.tap)

    def partition(self, event: StreamEvent) -> int:
        return partition_of(
            routing_id(event.userId, event.anonymousId, event.email), self._partitions
        )

    async def publish(self, event: StreamEvent) -> str:
        """Store the event in its partition; returns the stream entry id."""
        return (await self.publish_many([event]))[0]

    async def publish_many(self, events: list[StreamEvent]) -> list[str]:
        """Store several events, all or none; returns the stream entry id of each (one
        entry per partition: events of one partition share it)."""
        try:  # all encoded before any is queued: a bad one publishes none
            bodies = [stream_encoder.encode(event) for event in events]
        except UnicodeEncodeError:
            raise EventRejected(
                "a string holds a lone UTF-16 surrogate (an emoji cut in half?)"
            ) from None
        grouped = entries([self.partition(event) for event in events], bodies)
        request = _Request(grouped, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_loop())
        ids = await request.answer
        tap = self.tap
        if tap is not None and tap.watching:
            tap.copy(grouped.partitions, grouped.of_event, ids, bodies)
        return ids

    def _next_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0].size <= self._max_batch):
            request = self._queue.popleft()
            if not request.answer.done():  # a cancelled waiter's events are not sent
                batch.append(request)
                size += request.size
        return batch

    async def _flush_loop(self) -> None:
        while self._queue:
            batch = self._next_batch()
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[_Request]) -> None:
        """Send ``batch`` and settle each request from its own replies. A request whose
        every call was refused with NOSCRIPT (a restarted or flushed Redis forgot the
        script) stored nothing: it is sent once more after loading the script, and the
        others are answered meanwhile. (A cluster's pipeline already did that per call:
        ``cdp.cluster_client``.)"""
        replies = await self._round_trip(batch)
        if replies is None:
            return
        forgotten = []
        for request, own in zip(batch, replies, strict=True):
            if all(isinstance(reply, NoScriptError) for reply in own):
                forgotten.append(request)
            else:
                request.settle(own)
        if not forgotten:
            return
        try:
            await self._redis.script_load(self._script)
        except BaseException as exc:  # nothing of theirs ran: the Redis error (503)
            for request in forgotten:
                request.fail(exc)
            if not isinstance(exc, Exception):
                raise
            return
        replies = await self._round_trip(forgotten)
        for request, own in zip(forgotten, replies or [], strict=False):
            request.settle(own)

    async def _round_trip(self, batch: list[_Request]) -> list[list[Any]] | None:
        """One pipeline of script calls: each request's replies (an entry id list or the
        error, one per call); None when the round trip failed as a whole (every waiter
        is then answered)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                per_entry = isinstance(pipe, ClusterPipeline)
                calls = sum(request.queue_on(pipe, self._sha, per_entry) for request in batch)
                waits = await self._queue_waits(pipe, batch)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                replies = await self._replicated(batch, calls, replies, waits)
        except BaseException as exc:
            # Redis did not answer the round trip: those queued behind it would wait
            # out the same timeout one batch after another. Fail them now; they were
            # never sent, so their 503 hides nothing.
            queued = list(self._queue)
            self._queue.clear()
            sent: BaseException = exc
            if isinstance(exc, Exception) and _maybe_executed(exc):
                sent = OutcomeUnknown(f"redis did not answer: {exc}")
            for request in batch:
                request.fail(sent)
            for request in queued:
                request.fail(exc)
            if not isinstance(exc, Exception):  # cancelled: stop, nobody left waiting
                raise
            return None
        own, first = [], 0
        for request in batch:
            own.append(replies[first : first + request.calls])
            first += request.calls
        return own

    async def _queue_waits(self, pipe: Pipe, batch: list[_Request]) -> list[str]:
        """WAIT after the writes, on their connection: one per node written to on a
        cluster (the node each stream's slot maps to now), one on a single Redis. The
        names of the nodes asked."""
        replicas, timeout_ms = self._replicas
        if not replicas:
            return []
        if not isinstance(pipe, ClusterPipeline):
            pipe.execute_command("WAIT", replicas, timeout_ms)
            return ["redis"]
        nodes = {n.name: n for n in await self._nodes(batch)}
        for node in nodes.values():
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        return list(nodes)

    async def _nodes(self, batch: list[_Request]) -> list[Any]:
        """The cluster node holding each stream ``batch`` writes to, as the slot map says."""
        assert isinstance(self._redis, RedisCluster)
        await self._redis.initialize()  # the slot map, on a client not used yet
        streams = {keys.stream(p) for request in batch for p in request.entries.partitions}
        return [self._redis.get_node_from_key(stream) for stream in streams]

    async def _replicated(
        self, batch: list[_Request], calls: int, replies: list[Any], waits: list[str]
    ) -> list[Any]:
        """The script replies, each stored request's turned into ``NotReplicated`` when a
        WAIT counted fewer replicas than asked, or (a cluster) a stream's slot moved to a
        node whose connection did not carry the WAIT."""
        if not waits:
            return replies
        replies, acks = replies[:calls], replies[calls:]
        replicas, timeout_ms = self._replicas
        short = any(isinstance(a, Exception) or int(a) < replicas for a in acks)
        if not short and isinstance(self._redis, RedisCluster):
            short = any(node.name not in waits for node in await self._nodes(batch))
        if not short:
            return replies
        failure = NotReplicated(
            f"accepted by the primary but not yet replicated to {replicas} "
            f"replica{'s' if replicas > 1 else ''} within {timeout_ms} ms; retry with the "
            "same messageId/eventId: the retry is deduplicated"
        )
        return [r if isinstance(r, BaseException) else failure for r in replies]

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
