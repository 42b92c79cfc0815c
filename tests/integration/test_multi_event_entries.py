"""Entries of several events (a request's events of one partition, field ``b``) under
a worker SIGKILLed mid-drain: an entry is acknowledged only once every event in it is
settled, and its redelivery applies each event exactly once."""

from __future__ import annotations

import asyncio
import signal

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from cdp import keys
from cdp.api.publisher import Publisher
from cdp.events import StreamEvent, entry_events
from cdp.streams import text
from tests.support.stack import Stack
from tests.support.values import T0_MS
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

REQUESTS, PER_REQUEST, USERS = 40, 12, 6


def requests() -> list[list[StreamEvent]]:
    """Each request: events of USERS users (so several per partition), their times
    spread over 40 s, so a watermark in between applies part of each entry."""
    out = []
    for r in range(REQUESTS):
        out.append(
            [
                StreamEvent(
                    eventId=f"m{r}-{i}",
                    ts=T0_MS + ((r * 7 + i * 13) % 40) * 1000,
                    receivedAt=T0_MS,
                    type="TRACK",
                    userId=f"mu{i % USERS}",
                    name="Clicked",
                )
                for i in range(PER_REQUEST)
            ]
        )
    return out


async def publish(redis_url: str, batches: list[list[StreamEvent]], partitions: int) -> None:
    async with Redis.from_url(redis_url) as redis:
        publisher = Publisher(redis, partitions)
        for events in batches:
            await publisher.publish_many(events)
        await publisher.close()


def entries_by_id(stack: Stack) -> dict[tuple[int, str], list[str]]:
    """(partition, entry id) -> the eventIds it holds."""
    out: dict[tuple[int, str], list[str]] = {}
    raw = redis_sync.Redis.from_url(stack.redis_url)  # bytes, as the workers read them
    for p in range(stack.partitions):
        for entry_id, fields in raw.xrange(keys.stream(p)):
            events = entry_events(fields) or []
            out[(p, text(entry_id))] = [e.eventId for e in events]
    return out


def pending_entries(stack: Stack) -> set[tuple[int, str]]:
    out = set()
    for p in range(stack.partitions):
        for row in stack.r.xpending_range(keys.stream(p), keys.GROUP, "-", "+", 10_000):
            out.add((p, text(row["message_id"])))
    return out


def applied_ids(stack: Stack) -> set[str]:
    out: set[str] = set()
    for key in stack.r.scan_iter(match=keys.SEEN_PATTERN, count=1000):
        out.update(text(k) for k in stack.r.hkeys(key))
    return out


def clicked_total(stack: Stack) -> int:
    total = 0
    for u in range(USERS):
        cid = stack.r.get(keys.identifier(f"user:mu{u}"))
        if cid:
            pairs = stack.r.zrange(keys.counter(text(cid), "Clicked"), 0, -1, withscores=True)
            total += int(sum(s for _, s in pairs))
    return total


def test_sigkill_mid_drain_of_multi_event_entries_applies_every_event_once(
    stack: Stack,
) -> None:
    n = REQUESTS * PER_REQUEST
    stack.set_clock(T0_MS)
    victim = stack.start_worker("victim", window_size="5s")
    wait_until(
        lambda: all(stack.r.get(keys.lease(p)) for p in range(stack.partitions)),
        message="the victim to own every partition",
    )
    asyncio.run(publish(stack.redis_url, requests(), stack.partitions))
    entries = entries_by_id(stack)
    assert sum(len(ids) for ids in entries.values()) == n
    assert len(entries) < n and any(len(ids) > 1 for ids in entries.values())
    wait_until(lambda: stack.pending() == len(entries), message="every entry read")
    # The watermark passes about half of the events: most entries are partly applied.
    stack.set_clock(T0_MS + 5_000 + 20_000)
    stack.wait_metric("processed", 1)
    wait_until(lambda: stack.metric("processed") >= n // 3, message="part of the events applied")
    stack.kill(victim, signal.SIGKILL)
    processed = stack.metric("processed")
    assert 0 < processed < n
    # An entry is acknowledged only once every event in it is applied.
    applied = applied_ids(stack)
    pending = pending_entries(stack)
    for entry, ids in entries.items():
        if entry not in pending:
            assert set(ids) <= applied, f"entry {entry} acknowledged before all its events"
    assert any(set(ids) & applied for entry, ids in entries.items() if entry in pending), (
        "no entry was partly applied when the worker died"
    )
    # The heir claims what is pending: every event applied exactly once (dedup).
    stack.set_clock(T0_MS + 120_000)
    stack.start_worker("heir", window_size="5s")
    wait_until(lambda: stack.metric("processed") >= n, timeout=60, message="every event applied")
    stack.wait_idle()
    assert stack.metric("processed") == n
    assert clicked_total(stack) == n
    assert stack.pending() == 0
    assert applied_ids(stack) >= {i for ids in entries.values() for i in ids}
