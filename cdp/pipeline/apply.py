"""The apply step: ready events of one partition → one ``apply_batch`` script call.

Python does the pure work (identifier normalisation, ISO timestamps, counter buckets,
JSON of trait values) so the Lua script only does what must be atomic. ``queue_apply``
adds one call (up to ``batch-size`` events) to a pipeline; the worker queues all of a
tick's calls in one pipeline: one round trip per tick, whatever the number of events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from redis.asyncio.client import Pipeline

from cdp import keys
from cdp.events import StreamEvent, iso_ms
from cdp.identity import BLOCKED_VALUES
from cdp.scripts import Scripts
from cdp.settings import Settings


class ScriptEvent(msgspec.Struct, omit_defaults=True):
    """One event as ``apply_batch`` reads it (see the script's header)."""

    id: str
    sid: str
    ts: str
    m: str
    b: str
    t: str
    ids: list[str]
    tr: list[tuple[str, str]]
    n: str | None = None
    imp: bool = False


_encoder = msgspec.json.Encoder()


def bucket_member(ts_ms: int, bucket_ms: int) -> str:
    """The counter bucket holding ``ts_ms``: its start, 13 digits so it sorts as text."""
    return f"{ts_ms - ts_ms % bucket_ms:013d}"


def script_event(
    entry_id: str, event: StreamEvent, bucket_ms: int, blocked: frozenset[str] = BLOCKED_VALUES
) -> ScriptEvent:
    traits = event.traits or {}
    return ScriptEvent(
        id=event.eventId,
        sid=entry_id,
        ts=iso_ms(event.ts),
        m=f"{event.ts:013d}",
        b=bucket_member(event.ts, bucket_ms),
        t=event.type,
        ids=event.identifiers(blocked),
        tr=[(name, _encoder.encode(value).decode()) for name, value in traits.items()],
        n=event.name,
        imp=event.mode == "import",
    )


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

    def dedup_keys(self, partition: int, settings: Settings) -> tuple[str, str, int]:
        bucket = self.now_ms // settings.dedup_ttl_ms
        # An id recorded in bucket b is checked until the end of bucket b+1: at least
        # dedup-ttl, at most twice that. The expiry is relative (PEXPIRE), so that it
        # holds whether ``now`` is the server's time or a test clock's.
        expire_in = (bucket + 2) * settings.dedup_ttl_ms - self.now_ms
        return keys.dedup(partition, bucket), keys.dedup(partition, bucket - 1), expire_in


async def queue_apply(
    pipe: Pipeline,
    scripts: Scripts,
    settings: Settings,
    ctx: ApplyContext,
    partition: int,
    batch: Sequence[tuple[str, StreamEvent]],
) -> None:
    """Queue one ``apply_batch`` call for a slice of one partition's ordered events; its
    reply, in the pipeline's, is read with ``scripts.apply_batch.decode`` (a BatchResult)."""
    dedup_cur, dedup_prev, expire_in = ctx.dedup_keys(partition, settings)
    cutoff_ms = max(ctx.now_ms - settings.counter_window_ms, 0)
    payload = _encoder.encode(
        [
            script_event(eid, ev, settings.counter_bucket_ms, settings.blocked_values)
            for eid, ev in batch
        ]
    )
    await scripts.apply_batch.queue(
        pipe,
        stream=keys.stream(partition),
        lease=keys.lease(partition),
        dedup_current=dedup_cur,
        dedup_previous=dedup_prev,
        metrics=keys.METRICS,
        group=keys.GROUP,
        worker_id=ctx.worker_id,
        dedup_expire_ms=expire_in,
        counter_cutoff=bucket_member(cutoff_ms, settings.counter_bucket_ms),
        now_iso=iso_ms(ctx.now_ms),
        events=payload,
        limits=script_limits(settings, ctx.now_ms),
    )
