"""Entries that leave the pipeline unapplied: dropped, or parked as dead letters.

- dropped: an event older than the watermark minus grace-period when it arrived goes
  to ``cdp:events:dropped`` (and counts in ``dropped``);
- dead: an entry that cannot be read (deleted under us, not decodable), or an event
  that failed on its own, goes to ``cdp:events:dead``.

Either way the entry is recorded, then acknowledged: two ordered steps, each one
transaction in one slot (the record streams and the partition's stream are different
slots on a cluster), made idempotent by marks (``cdp:events:dropped`` and ``dead`` each
have theirs in their slot, ``keys.record_marks``): see ``DeadLetters.record``.

``retry_alone`` is how an event is found guilty: a batch the script refused as
CDP_POISON (or that could not be encoded) is applied again event by event, and only
the event that fails on its own, for a reason of its own, is parked. With the profile
protocol (``apply-protocol``), each event alone goes through
``cdp.pipeline.profile_apply.apply_partition``, whose CDP_POISON is the same refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from redis.exceptions import RedisError, ResponseError

from cdp import keys
from cdp.connect import Client
from cdp.events import StreamEvent
from cdp.pipeline.apply import ApplyContext, queue_apply
from cdp.pipeline.profile_apply import apply_partition
from cdp.scripts import BatchResult, Scripts, is_poison
from cdp.settings import Settings
from cdp.streams import add_once
from workers.state import Chunk, WorkerState


class Dropped(NamedTuple):
    entry_id: str
    event: StreamEvent | None  # None: unreadable, or guilty (dead letter)
    raw: bytes
    reason: str
    ack: bool = True  # False: an event of an entry whose other events are not settled


def _mark(partition: int, row: Dropped) -> str:
    """What names a record: its entry, and which of the entry's events (an entry of
    several events may leave several records)."""
    digest = hashlib.blake2b(row.raw, digest_size=8).hexdigest()
    return f"{partition}:{row.entry_id}:{digest}"


class DeadLetters:
    def __init__(
        self, redis: Client, scripts: Scripts, settings: Settings, state: WorkerState
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.state = state
        # The profile protocol (workers.ticking decides): events alone through it.
        self.profile_protocol = False

    async def record(self, partition: int, dropped: list[Dropped]) -> None:
        """Record each dropped entry in cdp:events:dropped (or dead), then acknowledge it.

        Two ordered steps, each a transaction in one slot (so the same on one Redis and
        on a cluster, where the record streams and the partition are different slots):
        the records with their marks (``record_marks``), then the XACK with the
        partition's ``dropped`` counter. A crash between the two leaves the entries
        pending: they are claimed and dropped again, and the marks make that second
        recording write nothing new before it acknowledges them.
        """
        streams: dict[str, list[Dropped]] = {}
        for row in dropped:
            streams.setdefault(keys.DROPPED if row.event is not None else keys.DEAD, []).append(row)
        for stream, rows in streams.items():
            await self._write_records(stream, partition, rows)
        acks = [d.entry_id for d in dropped if d.ack]
        n = sum(1 for d in dropped if d.event is not None)
        if acks or n:
            async with self.redis.pipeline(transaction=True) as pipe:
                if acks:
                    pipe.xack(keys.stream(partition), keys.GROUP, *acks)
                if n:
                    pipe.hincrby(keys.metrics(partition), "dropped", n)
                await pipe.execute()
        self.state.stats["dropped"] += len(dropped)

    async def _write_records(self, stream: str, partition: int, rows: list[Dropped]) -> None:
        """The records not written yet (marks kept dedup-ttl: a record is written once
        however often its entry is dropped again within that time)."""
        await add_once(
            self.redis,
            stream,
            [
                (
                    _mark(partition, row),
                    {
                        "e": row.raw,
                        "reason": row.reason,
                        "partition": partition,
                        "entryId": row.entry_id,
                    },
                )
                for row in rows
            ],
            self.settings.dropped_stream_maxlen,
            self.settings.dedup_ttl_ms,
        )

    async def retry_alone(
        self,
        partition: int,
        chunk: Chunk,
        ctx: ApplyContext,
        error: str,
        count: Callable[[BatchResult], int],
    ) -> int:
        """A batch failed because of an event: apply its events alone, parking the guilty.

        An event is parked in cdp:events:dead only when it fails on its own for a
        reason of its own (the script answers CDP_POISON, or it cannot be encoded);
        when Redis refuses the call for any other reason, the rest of the chunk goes
        back to the buffer. ``count`` takes each applied result; returns events applied.
        """
        log, state = self.state.log, self.state
        log.error(
            "apply failed, retrying event by event",
            partition=partition,
            error=error,
            events=len(chunk),
        )
        applied = 0
        for index, item in enumerate(chunk):
            reply: Any = None
            reason: str | None = None
            try:
                reply = await self._apply_alone(partition, item, ctx)
            except (ValueError, TypeError, OverflowError) as exc:
                reason = f"cannot encode the event: {exc}"
            except RedisError:
                state.requeue([(partition, chunk[index:])])
                raise
            if isinstance(reply, Exception):
                if not is_poison(reply):
                    log.warning("apply refused by redis; retried next tick", error=str(reply))
                    state.requeue([(partition, chunk[index:])])
                    return applied
                reason = str(reply)
            if reason is not None:
                eid, event = item
                log.error(
                    "event parked in dead-letter stream",
                    partition=partition,
                    eventId=event.eventId,
                    error=reason,
                )
                # Parked: settled. An entry of several events is acknowledged with it
                # only if it was the last of them (else ``settle`` leaves it tracked).
                tracked = eid in state.unsettled.get(partition, {})
                ack = state.settle(partition, eid) if tracked else True
                if ack and tracked:
                    state.completed.remove((partition, eid))
                try:
                    await self.record(
                        partition,
                        [
                            Dropped(
                                eid,
                                None,
                                msgspec.json.encode(event),
                                f"apply failed: {reason}",
                                ack,
                            )
                        ],
                    )
                except RedisError:
                    state.requeue([(partition, chunk[index:])])
                    raise
                continue
            result = (
                reply if isinstance(reply, BatchResult) else self.scripts.apply_batch.decode(reply)
            )
            if result.lease_lost:
                state.forget(partition)
                return applied
            state.settle(partition, item[0])
            applied += count(result)
        return applied

    async def _apply_alone(
        self, partition: int, item: tuple[str, StreamEvent], ctx: ApplyContext
    ) -> Any:
        """One event applied alone: the reply of its ``apply_batch`` call (an exception
        when refused), or with the profile protocol its BatchResult (the ResponseError
        when refused). A ``ProtocolBusy`` is raised (its batch is retried)."""
        sent = self.state.script_chunk(partition, [item])
        if self.profile_protocol:
            try:
                return await apply_partition(
                    self.redis, self.scripts, self.settings, ctx, partition, sent
                )
            except ResponseError as exc:  # not ProtocolBusy (a RedisError): raised
                return exc
        async with self.redis.pipeline(transaction=False) as pipe:
            await queue_apply(pipe, self.scripts, self.settings, ctx, partition, sent)
            (reply,) = await pipe.execute(raise_on_error=False)
        return reply
