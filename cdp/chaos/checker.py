"""The checker: what was acknowledged, against what Redis holds at the end.

Per operation (``history.Op``), with the eventIds that carry its tag in the streams
and the applied set of ``state.read_state``:

- acknowledged and applied under no eventId: **lost**, with why (never stored,
  parked, still pending, never read, acknowledged by the group without being applied);
- applied under two eventIds or more: **applied twice** (a call without a messageId
  stored twice, e.g. once by an attempt answered 503, then by its retry);
- a valid call answered 4xx, or rejected inside a 200 batch: an anomaly;
- stored by an attempt answered 503: an anomaly (a 503 promises nothing was stored;
  a 504 or no answer leaves it unknown, so such an attempt may store the event once).

The ``accepted`` metric must equal the number of stream entries stored. Then the
final state: the profiles (traits, identifiers, first/lastSeen, counters
bucket by bucket) must equal the reference model fed with the applied events, and
the segment events must be consistent (``segcheck``). Every anomaly is reported by
kind with examples. With ``appendfsync everysec`` an acknowledged event missing
after a kill -9 of Redis is the documented loss (counted as lost, a note, not an
anomaly), and its age at the kill is kept to show the bound.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cdp.chaos import segcheck
from cdp.chaos.history import History, Op, Round
from cdp.chaos.model import Model, canonical, snapshot
from cdp.chaos.state import RedisState, read_state
from cdp.connect import SyncClient
from cdp.metrics import counters_sync
from cdp.settings import Settings

FINAL = "(final state)"
EVERYSEC_LOSS = "acknowledged, lost by kill -9 of Redis (appendfsync everysec)"
STORED_AFTER_503 = "answered 503, yet stored"
NOTES = {EVERYSEC_LOSS}
EXAMPLES = 5
# An event may wait for its apply until window-size + this (a few ticks) after its answer.
IN_FLIGHT_SLACK_S = 1.0


@dataclass
class Row:
    fault: str
    count: int = 0
    accepted: int = 0
    lost: int = 0
    doubled: int = 0
    anomalies: int = 0


@dataclass
class Verdict:
    rows: dict[str, Row] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    everysec_loss_ages_ms: list[int] = field(default_factory=list)

    @property
    def anomalies(self) -> dict[str, int]:
        return {k: n for k, n in self.kinds.items() if k not in NOTES}

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def add(self, kind: str, example: str, row: Row | None = None) -> None:
        self.kinds[kind] += 1
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)
        if kind not in NOTES:
            (row or self.row(FINAL)).anomalies += 1

    def row(self, fault: str) -> Row:
        return self.rows.setdefault(fault, Row(fault))


def check(client: SyncClient, history: History, settings: Settings, appendfsync: str) -> Verdict:
    verdict = Verdict()
    for r in history.rounds:
        verdict.row(r.fault).count += r.fault != "none"
    state = read_state(client, settings.partitions)
    in_flight_s = settings.window_size_ms / 1000 + IN_FLIGHT_SLACK_S
    hits = [r.hit_at for r in history.rounds[1:]]
    for op in history.ops.values():
        round_ = history.rounds[_round_of(op, hits, in_flight_s)]
        _check_op(op, round_, state, verdict, appendfsync)
    _check_leftovers(state, verdict)
    stored = sum(len(locations) for locations in state.copies.values())
    accepted = counters_sync(client, settings.partitions, ["accepted"])["accepted"]
    if accepted != stored:
        verdict.add(
            "the metric accepted differs from the events stored",
            f"accepted {accepted}, stored {stored} (stream entries)",
        )
    live = _check_profiles(client, state, settings, verdict)
    segcheck.check_segments(client, settings, live, verdict.add)
    return verdict


def _round_of(op: Op, hits: list[float], in_flight_s: float) -> int:
    """The first fault that struck (``hits``: when each round's did) while the op's
    first attempt was in flight or its event could still wait to be applied; else the
    round it was sent in."""
    first = op.attempts[0]
    sent = bisect_right(hits, first.started)
    if sent < len(hits) and hits[sent] <= first.ended + in_flight_s:
        return sent + 1
    return sent


def _describe(op: Op) -> str:
    who = f"{op.call.kind} of u{op.call.user} via {op.route}"
    named = f"eventId {op.call.event_id}" if op.call.event_id else "no messageId"
    answers = ",".join(str(a.status or "no answer") for a in op.attempts)
    return f"op {op.call.tag} ({who}, {named}; answers {answers})"


def _check_op(op: Op, round_: Round, state: RedisState, verdict: Verdict, appendfsync: str) -> None:
    row = verdict.row(round_.fault)
    ids = state.by_op.get(op.call.tag, set())
    applied = ids & state.applied
    rejected = next((a for a in op.attempts if a.status and 400 <= a.status < 500), None)
    if rejected or any(a.acked and a.error for a in op.attempts):
        detail = rejected.error if rejected else next(a.error for a in op.attempts if a.error)
        verdict.add("a valid call was rejected", f"{_describe(op)}: {detail[:200]}", row)
    if op.acked:
        row.accepted += 1
        if not applied:
            row.lost += 1
            kind, where = _why_lost(op, ids, state)
            if kind == "acknowledged, never stored" and appendfsync == "everysec":
                acked_at = op.acked_at or 0.0
                if round_.fault == "redis-kill" and acked_at <= round_.hit_at:
                    kind = EVERYSEC_LOSS
                    verdict.everysec_loss_ages_ms.append(int((round_.hit_at - acked_at) * 1000))
            verdict.add(kind, f"{_describe(op)}: {where}", row)
    if len(applied) > 1:
        row.doubled += 1
        verdict.add("applied twice", f"{_describe(op)}: applied as {sorted(applied)}", row)
    may_store = sum(1 for a in op.attempts if a.status in (None, 504) or a.acked)
    if op.answered_503 and (len(ids) > may_store or (ids and not may_store)):
        verdict.add(STORED_AFTER_503, f"{_describe(op)}: stored as {sorted(ids)}", row)


def _check_leftovers(state: RedisState, verdict: Verdict) -> None:
    """Entries of applied events still pending or unread: stuck, although harmless."""
    for event_id, locations in state.copies.items():
        if event_id not in state.applied:
            continue  # reported with its operation, if acknowledged
        for loc in locations:
            if loc in state.pending:
                verdict.add(
                    "an entry left pending (its event applied from another copy)",
                    f"{event_id}: entry {loc[1]} of partition {loc[0]} pending for "
                    f"{state.pending[loc]}",
                )
            elif loc in state.undelivered:
                verdict.add(
                    "an entry never read (its event applied from another copy)",
                    f"{event_id}: entry {loc[1]} of partition {loc[0]}",
                )


def _why_lost(op: Op, ids: set[str], state: RedisState) -> tuple[str, str]:
    if op.call.tag in state.parked:
        return "acknowledged, parked instead of applied", state.parked[op.call.tag]
    if not ids:
        return "acknowledged, never stored", "no stream entry carries it"
    locations = [loc for eid in sorted(ids) for loc in state.copies[eid]]
    for loc in locations:
        if loc in state.pending:
            return (
                "acknowledged, still pending, never applied",
                f"entry {loc[1]} of partition {loc[0]} pending for {state.pending[loc]}",
            )
    for loc in locations:
        if loc in state.undelivered:
            return "acknowledged, never read", f"entry {loc[1]} of partition {loc[0]}"
    where = ", ".join(f"{p}/{e}" for p, e in locations)
    return "acknowledged, XACKed without being applied", f"entries {where}"


def _check_profiles(
    client: SyncClient, state: RedisState, settings: Settings, verdict: Verdict
) -> dict[str, dict[str, Any]]:
    """Redis's profiles against the model's; returns live cid -> the model's profile."""
    events = [state.events[eid] for eid in sorted(state.applied) if eid in state.events]
    for eid in sorted(state.applied - state.events.keys())[:EXAMPLES]:
        verdict.add("applied, but in no stream", f"eventId {eid}")
    model = Model(settings).apply(events)
    expected = canonical(list(model.profiles.values()))
    profiles = snapshot(client)
    actual = canonical(profiles)
    cids = {frozenset(p.identifiers): f"p{p.seq}" for p in profiles}
    for ids in sorted(expected.keys() | actual.keys(), key=sorted):
        name = ", ".join(sorted(ids))
        if ids not in actual:
            verdict.add("a profile of the model is missing", name)
            continue
        if ids not in expected:
            verdict.add("a profile the model does not have", f"{cids[ids]} ({name})")
            continue
        want, got = expected[ids], actual[ids]
        for part in ("traits", "firstSeen", "lastSeen", "counters"):
            if want[part] != got[part]:
                kind = f"{part} {'differ' if part.endswith('s') else 'differs'} from the model"
                if part == "counters" and _total(got) > _total(want):
                    kind = "counted more often than applied"
                verdict.add(kind, f"{cids[ids]} ({name}): {want[part]!r} != {got[part]!r}"[:400])
    return {cids[ids]: expected[ids] for ids in actual if ids in expected}


def _total(profile: dict[str, Any]) -> int:
    return sum(profile["counters"].get("$seen", {}).values())
