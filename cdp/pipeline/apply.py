"""The apply step: ready events of one partition → one ``apply_batch`` script call.

Python does the pure work (identifier normalisation, ISO timestamps, counter buckets,
JSON of trait values) so the Lua script only does what must be atomic. ``queue_apply``
adds one call (up to ``batch-size`` events) to a pipeline; the worker queues all of a
tick's calls in one pipeline: one round trip per tick, whatever the number of events.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from cdp import keys
from cdp.connect import Pipe
from cdp.events import StreamEvent, iso_ms
from cdp.identity import BLOCKED_VALUES
from cdp.scripts import Scripts
from cdp.settings import Settings

_encoder = msgspec.json.Encoder()
_encode_value = _encoder.encode


def bucket_member(ts_ms: int, bucket_ms: int) -> str:
    """The counter bucket holding ``ts_ms``: its start, 13 digits so it sorts as text."""
    return f"{ts_ms - ts_ms % bucket_ms:013d}"


_iso_seconds: dict[int, str] = {}


def iso_of(ms: int) -> str:
    """``cdp.events.iso_ms``, its whole-second part cached (events of a tick share it)."""
    second, milli = divmod(ms, 1000)
    head = _iso_seconds.get(second)
    if head is None:
        if len(_iso_seconds) >= 65_536:
            _iso_seconds.clear()
        head = _iso_seconds[second] = iso_ms(second * 1000)[:-4]
    return f"{head}{milli:03d}Z"


def dedup_shard(event_id: str, shards: int) -> int:
    """The legacy dedup hash of a bucket that remembered ``event_id`` (before dedup
    moved into the profiles' ``seen``): crc32 of its UTF-8 bytes."""
    return zlib.crc32(event_id.encode()) % shards


def dedup_key(partition: int, bucket: int, event_id: str, settings: Settings) -> str:
    """The legacy hash of dedup bucket ``bucket`` of ``partition`` that remembered
    ``event_id`` (only read now: ids recorded there before an upgrade stay duplicates)."""
    return keys.dedup_shard(partition, bucket, dedup_shard(event_id, settings.dedup_shards))


def script_event(
    entry_id: str,
    event: StreamEvent,
    bucket_ms: int,
    slot: int,
    blocked: frozenset[str] = BLOCKED_VALUES,
) -> list[Any]:
    """One event as ``apply_batch`` reads it (an array: see the script's header);
    ``slot``: the place of its legacy dedup shard among the call's shard keys (1, 2...)."""
    traits: list[str] = []
    if event.traits:
        for name, value in event.traits.items():
            traits.append(name)
            traits.append(_encode_value(value).decode())
    ts = event.ts
    return [
        event.eventId,
        entry_id,
        iso_of(ts),
        f"{ts:013d}",
        f"{ts - ts % bucket_ms:013d}",
        event.type,
        event.identifiers(blocked),
        traits,
        event.name or "",
        1 if event.mode == "import" else 0,
        slot,
    ]


def script_limits(settings: Settings, now_ms: int) -> bytes:
    """ARGV[8] of ``apply_batch``: the identity guard rails and segment bookkeeping."""
    return _encoder.encode(
        {
            "maxEmails": settings.max_emails,
            "maxAnons": settings.max_anonymous_ids,
            "maxUsers": settings.max_user_ids,
            "maxMerges": settings.max_merges,
            "mergeUsers": settings.merge_different_users,
            "minReturnGap": settings.counter_bucket_ms,
            "dirtyDue": now_ms + settings.lease_ttl_ms,
            "segmentEventsMaxlen": settings.segment_events_maxlen,
        }
    )


@dataclass(frozen=True, slots=True)
class ApplyContext:
    """What every call of one tick shares."""

    now_ms: int
    worker_id: str

    def dedup_bucket(self, settings: Settings) -> tuple[int, int]:
        """The current dedup bucket and the time to live, ms, of a ``seen`` hash that
        gets ids of it (to the end of the next bucket)."""
        bucket = self.now_ms // settings.dedup_ttl_ms
        # An id recorded in bucket b is honoured until the end of bucket b+1: at least
        # dedup-ttl, at most twice that. The expiry is relative (PEXPIRE), so that it
        # holds whether ``now`` is the server's time or a test clock's.
        return bucket, (bucket + 2) * settings.dedup_ttl_ms - self.now_ms


async def queue_apply(
    pipe: Pipe,
    scripts: Scripts,
    settings: Settings,
    ctx: ApplyContext,
    partition: int,
    batch: Sequence[tuple[str, StreamEvent]],
) -> None:
    """Queue one ``apply_batch`` call for a slice of one partition's ordered events; its
    reply, in the pipeline's, is read with ``scripts.apply_batch.decode`` (a BatchResult)."""
    bucket, expire_in = ctx.dedup_bucket(settings)
    cutoff_ms = max(ctx.now_ms - settings.counter_window_ms, 0)
    shards, bucket_ms, blocked = (
        settings.dedup_shards,
        settings.counter_bucket_ms,
        settings.blocked_values,
    )
    slots: dict[int, int] = {}  # legacy shard -> its place among the call's shard keys
    events = []
    for eid, ev in batch:
        shard = zlib.crc32(ev.eventId.encode()) % shards
        slot = slots.get(shard)
        if slot is None:
            slot = slots[shard] = len(slots) + 1
        events.append(script_event(eid, ev, bucket_ms, slot, blocked))
    dedup_keys: list[str] = []
    for shard in slots:  # in slot order
        dedup_keys.append(keys.dedup_shard(partition, bucket, shard))
        dedup_keys.append(keys.dedup_shard(partition, bucket - 1, shard))
    await scripts.apply_batch.queue(
        pipe,
        stream=keys.stream(partition),
        lease=keys.lease(partition),
        metrics=keys.metrics(partition),
        legacy_dedup_current=keys.dedup(partition, bucket),
        legacy_dedup_previous=keys.dedup(partition, bucket - 1),
        legacy_dedup_shards=dedup_keys,
        group=keys.GROUP,
        worker_id=ctx.worker_id,
        dedup_bucket=bucket,
        seen_expire_ms=expire_in,
        counter_cutoff=bucket_member(cutoff_ms, settings.counter_bucket_ms),
        now_iso=iso_ms(ctx.now_ms),
        events=_encoder.encode(events),
        limits=script_limits(settings, ctx.now_ms),
    )
