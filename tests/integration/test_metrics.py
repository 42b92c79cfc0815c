"""GET /metrics read by prometheus_client's own parser, against real API and worker
processes: every metric is there with its type, and each one moves when it should.

The worker holds events in its window buffer (the test clock does not move), so they
are buffered and pending; stopped (SIGSTOP), it leaves a new event undelivered (lag);
the clock moved, it applies them all and the counters and histograms grow.
"""

from __future__ import annotations

import signal

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

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
