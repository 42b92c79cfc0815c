"""The fault suite's pure parts: the workload is valid by the API's own rules, every
operation can be found again, and the checker's bookkeeping (attribution to rounds,
notes against anomalies, the table)."""

from __future__ import annotations

import json
import random

from cdp.api.tracking_spec import to_stream_event
from cdp.chaos.checker import EVERYSEC_LOSS, FINAL, STORED_AFTER_503, Verdict, _round_of
from cdp.chaos.history import Attempt, History
from cdp.chaos.report import render
from cdp.chaos.workload import Workload
from cdp.events import decode_ingest

NOW = 1_764_567_000_000


def test_every_request_is_valid_and_tags_each_operation() -> None:
    workload = Workload(users=20, run_id="t", rng=random.Random(3))
    seen: dict[str, int] = {}
    kinds = set()
    keyed = set()
    for _ in range(300):
        request = workload.next_request(NOW)
        if request.route == "/cdp/ingest":
            events = [
                decode_ingest(
                    request.body, now_ms=NOW, max_event_bytes=32768, max_future_skew_ms=300_000
                )
            ]
        else:
            assert request.headers["Authorization"].startswith("Basic ")
            body = json.loads(request.body)
            events = [
                to_stream_event(c, None, received_at=NOW + 5, sent_at=NOW, source="chaos")
                for c in body["batch"]
            ]
        keyed.add(request.keyed)
        for call, event in zip(request.calls, events, strict=True):
            kinds.add((request.route, call.kind))
            assert event.properties == {"op": call.tag}
            assert event.ts == NOW  # the client's time, whichever attempt is stored
            if call.event_id is not None:
                assert event.eventId == call.event_id
            for identifier in event.identifiers():
                owner = seen.setdefault(identifier, call.user)
                assert owner == call.user, f"{identifier} names two users"
    assert keyed == {True, False}
    assert {k for _, k in kinds} == {"IDENTIFY", "TRACK", "ALIAS"}
    assert {r for r, _ in kinds} == {"/cdp/ingest", "/v1/batch"}


def test_an_operation_counts_in_the_round_of_the_fault_it_was_in_flight_for() -> None:
    history = History()
    for fault, hit in (("worker-kill", 100.0), ("redis-kill", 200.0)):
        history.begin_round(fault).hit_at = hit
    hits = [r.hit_at for r in history.rounds[1:]]

    def op(started: float, ended: float) -> int:
        request = Workload(1, "t", random.Random(0)).next_request(NOW)
        attempts = history.invoke(request)
        attempts.append(Attempt(started, ended, 202))
        return _round_of(history.ops[request.calls[0].tag], hits, in_flight_s=2.0)

    assert op(10.0, 11.0) == 0  # long done before the first fault
    assert op(97.0, 98.5) == 1  # answered, maybe not yet applied, when the worker died
    assert op(99.0, 150.0) == 1  # in flight at the kill
    assert op(120.0, 121.0) == 1  # sent after the worker kill, before the Redis kill
    assert op(198.5, 199.0) == 2
    assert op(250.0, 251.0) == 2


def test_notes_do_not_count_as_anomalies_and_the_table_adds_up() -> None:
    verdict = Verdict()
    verdict.row("none")
    row = verdict.row("redis-oom")
    row.count, row.accepted, row.lost = 2, 10, 1
    verdict.add(EVERYSEC_LOSS, "op x", row)
    assert verdict.ok and row.anomalies == 0
    verdict.add(STORED_AFTER_503, "op w", row)  # a 503 promises nothing was stored
    verdict.add("acknowledged, never stored", "op y", row)
    verdict.add("segment events do not alternate ENTER/EXIT", "pro_plan / p1")
    assert not verdict.ok
    assert (row.anomalies, verdict.rows[FINAL].anomalies) == (2, 1)
    table = render(verdict)
    assert "| redis-oom     |     2 |" in table
    assert "| total" in table and "ANOMALY: acknowledged, never stored (1)" in table
    assert f"ANOMALY: {STORED_AFTER_503} (1)" in table
    assert f"note: {EVERYSEC_LOSS} (1)" in table
