"""The fault suite, short: every fault once, under load, against a stack of its own.

One run (about a minute): an embedded redis-server with ``appendfsync always`` on its
own data directory (not the session's server: it gets kill -9'd), the API and two
workers as processes, a load client sending IDENTIFY/TRACK/ALIAS over
``/cdp/ingest`` and ``/v1/batch`` (with and without messageId), and the nemesis
striking each fault in turn. Then per fault: nothing acknowledged is lost, nothing is
applied twice, no anomaly; and the final profiles equal the reference model's, with
consistent segment events. ``cdp chaos --minutes N`` is the long run of the same.

The last test stops the workers and tampers with Redis, to show the checker notices.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis as redis_sync

from cdp import keys
from cdp.chaos.checker import FINAL, Verdict
from cdp.chaos.nemesis import FAULTS
from cdp.chaos.report import render
from cdp.chaos.runner import ChaosConfig, ChaosRun
from cdp.identity import partition_of, routing_id

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCHEDULE = ("worker-kill", "worker-pause", "redis-pause", "redis-oom", "api-kill", "redis-kill")


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChaosRun, Verdict]]:
    config = ChaosConfig(
        run_dir=tmp_path_factory.mktemp("chaos"),
        faults=SCHEDULE,
        appendfsync="always",
        workers=2,
        users=40,
        concurrency=6,
        lease_ttl="1s",
        quiet_s=2.0,
        settle_s=20.0,
        seed=8,
        timing={"redis_pause_s": 6.0, "oom_s": 3.0},
    )
    run = ChaosRun(config, progress=lambda line: None)
    try:
        run.start()
        asyncio.run(run.drive())
        run.settle()
        yield run, run.check()
    finally:
        run.stop()


def test_the_schedule_covers_every_fault() -> None:
    assert sorted(SCHEDULE) == sorted(FAULTS)


@pytest.mark.parametrize("fault", SCHEDULE)
def test_fault_struck_under_load(fault_run: tuple[ChaosRun, Verdict], fault: str) -> None:
    run, verdict = fault_run
    row = verdict.rows[fault]
    assert row.count == 1
    assert row.accepted > 0, render(verdict)
    (struck,) = [r for r in run.history.rounds if r.fault == fault]
    assert 0 < struck.hit_at <= struck.healed_at
    in_flight = [
        a
        for op in run.history.ops.values()
        for a in op.attempts
        if a.started <= struck.hit_at <= a.ended
    ]
    assert in_flight, f"no request was in flight when {fault} struck"


@pytest.mark.parametrize("fault", SCHEDULE)
def test_nothing_acknowledged_is_lost_or_applied_twice(
    fault_run: tuple[ChaosRun, Verdict], fault: str
) -> None:
    _, verdict = fault_run
    row = verdict.rows[fault]
    assert (row.lost, row.doubled, row.anomalies) == (0, 0, 0), render(verdict)


def test_final_profiles_equal_the_model_and_segment_events_are_consistent(
    fault_run: tuple[ChaosRun, Verdict],
) -> None:
    run, verdict = fault_run
    assert run.settled, render(verdict)
    final = verdict.rows.get(FINAL)
    assert final is None or final.anomalies == 0, render(verdict)


def test_the_checker_notices_lost_doubled_and_misordered(
    fault_run: tuple[ChaosRun, Verdict],
) -> None:
    """Tamper with the final state in three ways; each must show as its anomaly."""
    run, _ = fault_run
    for name in run.cluster.worker_names:  # nothing may apply the forged entry below
        run.cluster.processes[name].terminate()
        run.cluster.processes[name].wait(timeout=30)
    client = redis_sync.Redis.from_url(run.cluster.redis.url)
    keyed = [o for o in run.history.ops.values() if o.acked and o.call.event_id]
    lost = keyed[0]
    doubled = next(o for o in keyed if o.call.user != lost.call.user)
    assert lost.call.event_id is not None
    (seen_key,) = [
        k
        for k in client.scan_iter(match=keys.SEEN_PATTERN)
        if client.hexists(k, lost.call.event_id)
    ]
    user = f"u{doubled.call.user}"
    partition = partition_of(routing_id(user, None, None), run.settings.partitions)
    try:
        # Lost: an acknowledged event no longer counts as applied.
        client.hdel(seen_key, lost.call.event_id)
        # Applied twice: a second, applied event carrying another operation's tag.
        forged = {
            "eventId": "forged-copy",
            "ts": int(doubled.attempts[0].started * 1000),
            "receivedAt": int(doubled.attempts[0].started * 1000),
            "type": "TRACK",
            "userId": user,
            "name": "Viewed",
            "properties": {"op": doubled.call.tag},
        }
        client.xadd(keys.stream(partition), {"e": json.dumps(forged)})
        client.hset(seen_key, "forged-copy", 1)
        # Misordered: an EXIT with no ENTER before it.
        exit_event = {
            "eventId": "seg:pro_plan:p999999:1",
            "segment": "pro_plan",
            "transition": "EXIT",
            "canonicalId": "p999999",
            "e": json.dumps({"ts": "2000-01-01T00:00:00.000Z"}),
        }
        client.xadd(keys.SEGMENT_EVENTS, exit_event)
        tampered = run.check()
        kinds = set(tampered.anomalies)
        assert "applied twice" in kinds, render(tampered)
        assert "acknowledged, XACKed without being applied" in kinds, render(tampered)
        assert "segment events do not alternate ENTER/EXIT" in kinds, render(tampered)
        assert "counted more often than applied" in kinds, render(tampered)  # lost's profile
        assert "counters differ from the model" in kinds, render(tampered)  # the forged one's
    finally:
        client.close()
