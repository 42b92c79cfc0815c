"""The tail counter and the history sampler: run by the worker holding the sweeper lease.

**Tail counter.** Segment transitions per segment, identity merges and refused links
per reason are counted from the records themselves, whatever wrote them (the apply, the
sweeper, a backfill, an erasure, the cluster relay): a pass reads ``cdp:segment-events``
and ``cdp:merges`` after the cursor saved in ``cdp:metrics:tail`` (XRANGE, at most
``PASS_CAP`` entries per stream; a run makes passes until each stream is caught up or
``PASS_BUDGET_S`` is spent), then adds its counts and the new cursor with one
script on that one key (``lua/metrics_tail-1.lua``), only if the cursor has not moved
since the pass read it: two runners (a sweeper lease changing hands) never count an
entry twice, the loser's pass is dropped and read again from the new cursor. The counts
start at the first entry still in each stream when counting first ran (older entries
trimmed by MAXLEN are not counted); entries trimmed before a pass reached them (the
stream capped faster than passes run) are not counted either.

**History.** Every ``metrics-sample-interval`` a sample of the totals is added to
``cdp:metrics:history`` (XADD MAXLEN ~ ``HISTORY_MAXLEN``), field ``s``: ``{"at": ms
(wall clock), "counters": {name: total} (cdp.metrics.COUNTERS), "segments": {segment:
{"enter": n, "exit": n}}}`` (the segments defined now: a deleted one's counts stay in
the hash, left out of samples and ``/metrics``, and go on if it is created again);
``cdp.metrics.read_history`` reads them back.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgspec
from redis.exceptions import RedisError

from cdp import keys
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.metrics import Tail, counters
from cdp.scripts import Scripts
from cdp.settings import Settings
from cdp.streams import text

PASS_CAP = 1_000  # entries read per stream per pass
TAIL_INTERVAL_S = 2.0  # the least time between two runs (the sampler runs one too)
PASS_BUDGET_S = 0.5  # a run's passes stop once this is spent (the sweeper waits on them)
HISTORY_MAXLEN = 400

# Stream name in the cursor's field -> the stream counted.
STREAMS = {"segment-events": keys.SEGMENT_EVENTS, "merges": keys.MERGES}


def _field(fields: dict[Any, Any], name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    return "" if value is None else text(value)


def classify(stream: str, fields: dict[Any, Any]) -> str | None:
    """The tail counter's field an entry of ``stream`` counts in (None: counted nowhere)."""
    if stream == "segment-events":
        segment, kind = _field(fields, "segment"), _field(fields, "transition").lower()
        return f"{kind}:{segment}" if segment and kind in ("enter", "exit") else None
    status = _field(fields, "status")
    if status == "merged":
        return "merged"
    if status == "refused":
        return f"refused:{_field(fields, 'reason') or 'unknown'}"
    return None


async def count_pass(redis: Client, scripts: Scripts, stream: str, cap: int = PASS_CAP) -> int:
    """One pass over ``stream`` (a key of ``STREAMS``); returns the entries counted (0
    when there were none, or another runner moved the cursor first)."""
    cursor_field = f"cursor:{stream}"
    saved = await redis.hget(keys.METRICS_TAIL, cursor_field)
    cursor = text(saved) if saved is not None else ""
    rows: Any = await redis.xrange(STREAMS[stream], f"({cursor}" if cursor else "-", "+", count=cap)
    if not rows:
        return 0
    counts: Counter[str] = Counter()
    for _, fields in rows:
        name = classify(stream, fields)
        if name is not None:
            counts[name] += 1
    last = text(rows[-1][0])
    written = await scripts.metrics_tail(keys.METRICS_TAIL, cursor_field, cursor, last, counts)
    return len(rows) if written else 0


async def count_all(
    redis: Client, scripts: Scripts, cap: int = PASS_CAP, budget_s: float = PASS_BUDGET_S
) -> int:
    """Passes over each stream, again over those whose pass was full, until every stream
    is caught up (a pass counted fewer than ``cap``: none left, or another runner moved
    the cursor) or ``budget_s`` is spent (the sweeper's other duties wait meanwhile);
    returns the entries counted."""
    deadline = time.monotonic() + budget_s
    total, behind = 0, list(STREAMS)
    while behind:
        counted = {stream: await count_pass(redis, scripts, stream, cap) for stream in behind}
        total += sum(counted.values())
        behind = [stream for stream, n in counted.items() if n >= cap]
        if time.monotonic() >= deadline:
            break
    return total


async def sample(redis: Client, partitions: int) -> dict[str, Any]:
    """The totals now, as a history Sample."""
    totals = await counters(redis, partitions)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS_TAIL)
        pipe.hkeys(keys.SEGMENTS)
        raw, custom = await pipe.execute()
    tail = Tail.parse(raw).defined_only(custom)
    return {"at": wall_ms(), "counters": totals, "segments": tail.transitions}


async def write_sample(redis: Client, partitions: int) -> dict[str, Any]:
    taken = await sample(redis, partitions)
    await redis.xadd(
        keys.METRICS_HISTORY,
        {"s": msgspec.json.encode(taken)},
        maxlen=HISTORY_MAXLEN,
        approximate=True,
    )
    return taken


class MetricsRole:
    """The sweeper's metrics duties, called at each of its sweeps (``workers.roles``):
    a tail pass every ``TAIL_INTERVAL_S`` and a history sample every
    metrics-sample-interval (after a pass, so its segments are current)."""

    def __init__(self, redis: Client, scripts: Scripts, settings: Settings, log: Any) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.log = log
        self._counted_at = -float("inf")
        self._sampled_at = -float("inf")

    async def run(self) -> None:
        now = time.monotonic()
        sample_due = now - self._sampled_at >= self.settings.metrics_sample_interval_ms / 1000
        try:
            if sample_due or now - self._counted_at >= TAIL_INTERVAL_S:
                self._counted_at = now
                await count_all(self.redis, self.scripts)
            if sample_due:
                self._sampled_at = now
                await write_sample(self.redis, self.settings.partitions)
        except RedisError as exc:
            self.log.warning("metrics tail/history: redis error", error=str(exc))
