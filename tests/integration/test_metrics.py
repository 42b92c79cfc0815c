"""GET /metrics read by prometheus_client's own parser, against real API and worker
processes: every metric is there with its type, and each one moves when it should.

The worker holds events in its window buffer (the test clock does not move), so they
are buffered and pending; stopped (SIGSTOP), it leaves a new event undelivered (lag);
the clock moved, it applies them all and the counters and histograms grow.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio import Redis

from cdp import keys, metrics
from cdp.metrics import COUNTERS
from tests.support.stack import Stack
from tests.support.values import ms
from tests.support.wait import wait_until

TS = "2025-10-04T10:00:00Z"

TYPES = {
    "cdp_http_request_duration_seconds": "histogram",
    "cdp_consumer_lag_entries": "gauge",
    "cdp_consumer_pending_entries": "gauge",
    "cdp_worker_buffered_events": "gauge",
    "cdp_worker_partitions": "gauge",
    "cdp_events_buffered": "gauge",
    "cdp_workers": "gauge",
    "cdp_events_accepted": "counter",
    "cdp_events_processed": "counter",
    "cdp_events_late": "counter",
    "cdp_events_dropped": "counter",
    "cdp_events_dedup_hits": "counter",
    "cdp_events_suppressed": "counter",
    "cdp_events_replayed": "counter",
    "cdp_apply_batch_duration_seconds": "histogram",
    "cdp_event_freshness_seconds": "histogram",
    "cdp_event_pipeline_latency_seconds": "histogram",
    "cdp_segment_transitions": "counter",
    "cdp_identity_merges": "counter",
    "cdp_identity_link_refusals": "counter",
    "cdp_webhook_deliveries": "counter",
    "cdp_webhook_retries": "counter",
    "cdp_webhook_dead_letters": "counter",
}


def scrape(stack: Stack) -> dict[str, tuple[str, list[Sample]]]:
    resp = stack.get("/metrics")
    assert resp.status == 200
    families = text_string_to_metric_families(resp.body.decode())
    return {f.name: (f.type, list(f.samples)) for f in families}


def total(stack: Stack, name: str, sample: str | None = None, **labels: str) -> float:
    """The sum of the samples ``sample`` (default ``name``) whose labels include ``labels``."""
    _, samples = scrape(stack)[name]
    return sum(
        s.value
        for s in samples
        if s.name == (sample or name) and labels.items() <= s.labels.items()
    )


def test_every_metric_is_typed_and_moves(stack: Stack) -> None:
    stack.set_clock(TS)
    stack.start_api()
    worker = stack.start_worker("w1")
    wait_until(
        lambda: total(stack, "cdp_worker_partitions", worker="w1") == stack.partitions,
        timeout=20,
        message="w1 to hold every partition",
    )
    for n in range(5):
        stack.send(f"m-{n}", TS, type="TRACK", userId=f"u{n}", name="Opened")
    # Within the window: read by the worker, buffered there, not acknowledged.
    wait_until(
        lambda: total(stack, "cdp_worker_buffered_events", worker="w1") == 5,
        timeout=20,
        message="w1 to report its 5 buffered events",
    )
    assert total(stack, "cdp_events_buffered") == 5
    assert total(stack, "cdp_consumer_pending_entries") == 5
    assert total(stack, "cdp_consumer_lag_entries") == 0

    # Stopped, it reads nothing more. A read it had blocked in may still be served the
    # first of two events of one partition (Redis answers the socket); not the second.
    worker.send_signal(signal.SIGSTOP)
    try:
        for n in range(2):
            stack.send(f"m-lag-{n}", TS, type="TRACK", userId="u-lag", name="Opened")
        lag = total(stack, "cdp_consumer_lag_entries")
        assert lag >= 1
        assert lag + total(stack, "cdp_consumer_pending_entries") == 5 + 2
    finally:
        worker.send_signal(signal.SIGCONT)

    stack.set_clock(ms(TS) + 60_000)
    stack.wait_metric("processed", 7)
    stack.wait_idle()

    families = scrape(stack)
    assert {name: kind for name, (kind, _) in families.items() if name in TYPES} == TYPES
    assert total(stack, "cdp_events_processed", "cdp_events_processed_total") == 7
    assert total(stack, "cdp_events_accepted", "cdp_events_accepted_total") == 7
    assert total(stack, "cdp_consumer_lag_entries") == 0
    assert total(stack, "cdp_consumer_pending_entries") == 0
    assert total(stack, "cdp_workers") == 1
    ingest = {"route": "/cdp/ingest", "method": "POST", "status": "202"}
    count = "cdp_http_request_duration_seconds_count"
    assert total(stack, "cdp_http_request_duration_seconds", count, **ingest) == 7
    assert total(stack, "cdp_http_request_duration_seconds", count, route="/metrics") >= 5
    summed = "cdp_http_request_duration_seconds_sum"
    assert total(stack, "cdp_http_request_duration_seconds", summed, **ingest) > 0
    missing = {"route": "unmatched", "status": "404"}
    stack.get("/cdp/nowhere")
    assert total(stack, "cdp_http_request_duration_seconds", count, **missing) == 1

    # The worker's histograms, flushed once per ticker-interval: one freshness
    # observation per applied event, each applied at the clock's TS + 60 s.
    fresh = "cdp_event_freshness_seconds"
    wait_until(
        lambda: total(stack, fresh, f"{fresh}_count") == 7,
        timeout=20,
        message="the 7 events' freshness to be flushed",
    )
    assert total(stack, fresh, f"{fresh}_sum") == 7 * 60
    assert total(stack, fresh, f"{fresh}_bucket", le="30.0") == 0
    assert total(stack, fresh, f"{fresh}_bucket", le="60.0") == 7
    latency = "cdp_event_pipeline_latency_seconds"  # receivedAt -> applied: same events
    wait_until(lambda: total(stack, latency, f"{latency}_count") == 7, message="latency")
    batch = "cdp_apply_batch_duration_seconds"
    # One observation per apply round trip (a tick's pipeline carries every partition).
    assert 1 <= total(stack, batch, f"{batch}_count") <= 7
    assert total(stack, batch, f"{batch}_sum") > 0
    assert total(stack, batch, f"{batch}_bucket", le="+Inf") == total(
        stack, batch, f"{batch}_count"
    )


def test_transitions_merges_refusals_are_the_records_and_history_is_sampled(
    stack: Stack,
) -> None:
    """The tail counter's counts equal the entries of cdp:segment-events per segment and
    kind, and of cdp:merges by status and reason; the sampler writes the history."""
    stack.set_clock(TS)
    stack.start_api()
    stack.start_worker("w1", metrics_sample_interval="100ms")
    for n in range(5):  # u1 becomes a power user...
        stack.send(f"p-{n}", TS, type="TRACK", userId="u1", name="Opened")
    stack.send("a-1", TS, type="IDENTIFY", anonymousId="a", traits={"x": 1})
    stack.send("a-2", TS, type="IDENTIFY", userId="u2", traits={"y": 1})
    stack.send("f-1", TS, type="IDENTIFY", userId="alice", email="family@example.com")
    stack.set_clock(ms(TS) + 10_000)
    stack.wait_metric("processed", 8)
    # ... a merge of anon a into u2, and a refusal (a second userId for one email).
    stack.send("a-3", "2025-10-04T10:00:05Z", type="ALIAS", anonymousId="a", userId="u2")
    stack.send(
        "f-2", "2025-10-04T10:00:05Z", type="IDENTIFY", userId="bob", email="family@example.com"
    )
    stack.set_clock(ms(TS) + 20_000)
    stack.wait_metric("processed", 10)
    # ... and leaves the segment once its events are out of the 24 h window.
    wait_until(lambda: stack.r.xlen(keys.SEGMENT_EVENTS) == 1, message="the ENTER")
    stack.set_clock(ms(TS) + 25 * 3_600_000)

    def expected() -> dict[tuple[str, ...], int]:
        counts: dict[tuple[str, ...], int] = {}
        for _, f in stack.r.xrange(keys.SEGMENT_EVENTS):
            key = ("cdp_segment_transitions_total", f["segment"], f["transition"].lower())
            counts[key] = counts.get(key, 0) + 1
        for _, f in stack.r.xrange(keys.MERGES):
            if f["status"] == "merged":
                key = ("cdp_identity_merges_total",)
            else:
                key = ("cdp_identity_link_refusals_total", f["reason"])
            counts[key] = counts.get(key, 0) + 1
        return counts

    def scraped() -> dict[tuple[str, ...], int]:
        families = scrape(stack)
        counts: dict[tuple[str, ...], int] = {}
        for name in TAIL:
            for s in families[name][1]:
                if s.name.endswith("_total") and s.value:
                    labels = (s.labels.get(k) for k in ("segment", "kind", "reason"))
                    counts[(s.name, *(v for v in labels if v is not None))] = int(s.value)
        return counts

    want = {
        ("cdp_segment_transitions_total", "power_user", "enter"): 1,
        ("cdp_segment_transitions_total", "power_user", "exit"): 1,
        ("cdp_identity_merges_total",): 1,
    }
    wait_until(
        lambda: want.items() <= expected().items() and scraped() == expected(),
        timeout=30,
        message="the tail counter to count every record",
    )
    assert any(k[0] == "cdp_identity_link_refusals_total" for k in scraped())

    def with_exit() -> list[dict[str, Any]]:
        samples = read_history(stack)
        done = samples and samples[-1]["segments"].get("power_user", {}).get("exit")
        return samples if done else []

    history = wait_until(with_exit, timeout=20, message="a history sample with the exit")
    assert len(history) >= 2
    last = history[-1]
    assert set(last) == {"at", "counters", "segments"}
    assert set(last["counters"]) == set(COUNTERS)
    assert last["counters"]["processed"] == 10
    assert last["segments"]["power_user"] == {"enter": 1, "exit": 1}
    assert [s["at"] for s in history] == sorted(s["at"] for s in history)


TAIL = ("cdp_segment_transitions", "cdp_identity_merges", "cdp_identity_link_refusals")


def read_history(stack: Stack) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        redis = Redis.from_url(stack.redis_url)
        try:
            return await metrics.read_history(redis, 0)
        finally:
            await redis.aclose()

    return asyncio.run(go())
