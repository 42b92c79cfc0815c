"""Segment evaluation: profiles in, ENTER/EXIT transitions out, exactly once.

``SegmentEngine.evaluate(cids, now_ms)`` reads the profiles with ``profile_view`` (a
consistent snapshot of each with its version; the next chunk of ``READ_CHUNK`` is read
while Python evaluates the current one) and their due times (ZMSCORE of the due index,
in the same round trip), reading only the traits and counters the definitions name
(``SegmentCache.reads``), evaluates every defined segment in Python (each rule compiled
once per definition, ``cdp.segments.rules.compile_rule``), and writes the outcome of
the profiles whose memberships or due time change with ``segment_transition``, which,
per profile, changes memberships and records the events atomically, and only if the
evaluation is still the newest: the profile, its memberships and the definitions have
not changed since they were read (the memberships: no evaluation was accepted since,
by the profile's ``evaluations`` count, which every accepted write bumps; not by
evaluatedMs, which a write at the same time leaves as it was).

The writes have two packings, every key of each script declared
(``cdp.segments.transitions``): one call per chunk with everything inside on one
Redis; one call per profile on a cluster, each transition pushed to the profile's
outbox and relayed right after.

Evaluation time: a profile is evaluated at ``max(now, evaluatedMs)``, evaluatedMs being
the time of its last accepted evaluation (whoever made it: another worker, the sweeper,
a host whose clock is ahead), and the script refuses an evaluation older than that
time. So a profile's accepted evaluations, and its segment events, never go back in
time: a tick that read a power user just before the expiry cannot ENTER it again after
the sweeper's EXIT. A refused evaluation is read and evaluated again (``MAX_RETRIES``);
a profile still refused after that is left to whoever evaluated it meanwhile, and to
the sweeper (the apply marked it due).

Who calls it: the worker, right after each tick's apply, for the profiles that tick
touched (once per profile per tick); the sweeper, for profiles whose due time has
come (time-driven exits, and profiles whose worker died before evaluating them); and
the backfill of a new or changed definition, for every profile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import structlog

from cdp import keys
from cdp.connect import Client, is_cluster
from cdp.events import iso_ms, to_ms
from cdp.scripts import ProfileRow, Scripts, TransitionRequest
from cdp.segments.definitions import Segment, SegmentCache
from cdp.segments.outbox import Relay, uses_outbox
from cdp.segments.rules import Check, ProfileView, Reads
from cdp.segments.transitions import Outcome, TransitionWriter
from cdp.settings import Settings
from cdp.streams import text

log = structlog.get_logger("cdp.segments")

READ_CHUNK = 200
MAX_RETRIES = 3
YIELD_EVERY = 32  # profiles evaluated between two yields to the event loop


@dataclass(frozen=True, slots=True)
class Snapshot:
    cid: str
    version: str
    view: ProfileView
    who: dict[str, str]
    memberships: dict[str, bool]  # as read: segment -> member
    due: int | None  # as read: the profile's time in cdp:segments:due
    evaluated: str = ""  # as read: evaluatedMs, the time of the last accepted evaluation
    evaluations: str = ""  # as read: how many evaluations were accepted (the write's token)
    outbox: int = 0  # as read: entries of its outbox not relayed yet

    def evaluation_ms(self, now_ms: int) -> int:
        """When to evaluate: now, or the last accepted evaluation's time if that is later."""
        return max(now_ms, int(self.evaluated)) if self.evaluated else now_ms


class _Cell(msgspec.Struct):
    """A trait cell ``{"v", "ts", "eventId"}``: only the value is read."""

    v: Any


class _State(msgspec.Struct):
    """A membership state ``{"in", "n", "since"}``: only ``in`` is read."""

    in_: Any = msgspec.field(name="in")


_cell_decoder = msgspec.json.Decoder(_Cell)
_state_decoder = msgspec.json.Decoder(_State)
_DECODE_ERRORS = (msgspec.MsgspecError, ValueError)
_WHO = {"anon": "anonymousId", "email": "email", "user": "userId"}


def _trait_value(raw: Any) -> Any:
    """``json.loads(raw)["v"]``, by msgspec; json (and its errors) for what msgspec refuses
    (NaN, infinities, lone surrogates, ...)."""
    try:
        return _cell_decoder.decode(raw).v
    except _DECODE_ERRORS:
        return json.loads(raw)["v"]


def _member(raw: Any) -> bool:
    """``bool(json.loads(raw)["in"])``, as ``_trait_value``."""
    try:
        return bool(_state_decoder.decode(raw).in_)
    except _DECODE_ERRORS:
        return bool(json.loads(raw)["in"])


def parse_view(cid: str, row: ProfileRow, bucket_ms: int, due: Any = None) -> Snapshot | None:
    """One ``profile_view`` row and the profile's score in the due index (ZMSCORE, None
    when it is not due) -> Snapshot; None for a missing or merged-away profile."""
    if not row.version or row.merged_into:
        return None
    traits, counters, states = row.traits, row.counters, row.segments
    trait_values: dict[str, Any] = {}
    for i in range(0, len(traits), 2):
        value = _trait_value(traits[i + 1])
        if value is not None:
            trait_values[text(traits[i])] = value
    counter_values = {
        text(counters[i]): _pairs(counters[i + 1]) for i in range(0, len(counters), 2)
    }
    who: dict[str, str] = {}
    if row.user:
        who["userId"] = text(row.user).removeprefix("user:")
    elif row.first_identifier:
        kind, _, value = text(row.first_identifier).partition(":")
        who[_WHO[kind]] = value
    view = ProfileView(
        traits=trait_values,
        counters=counter_values,
        last_seen_ms=int(row.last_seen_ms) if row.last_seen_ms else None,
        returns=returns_of(counter_values.get(keys.SEEN, {}), row.first_seen, bucket_ms),
        bucket_ms=bucket_ms,
    )
    memberships = {text(states[i]): _member(states[i + 1]) for i in range(0, len(states), 2)}
    return Snapshot(
        cid,
        text(row.version),
        view,
        who,
        memberships,
        int(float(due)) if due is not None else None,
        text(row.evaluated_ms) if row.evaluated_ms else "",
        text(row.evaluations) if row.evaluations else "",
        int(row.outbox),
    )


def returns_of(
    seen: dict[int, int], first_seen: Any, bucket_ms: int
) -> tuple[tuple[int, int], ...]:
    """(bucket, inactivity before it) for each activity bucket that follows a gap.

    Derived from the ``$seen`` buckets, which every order of the same events agrees
    on, and exact to a bucket: the gap is measured start to start, and adjacent
    buckets are no return. The oldest bucket kept follows a gap when the profile was
    seen before it (its predecessor has been pruned, so the gap is at least the
    counter window minus the rule's ``within``; measured here up to firstSeen).
    """
    buckets = sorted(seen)
    if not buckets:
        return ()
    out = []
    if first_seen:
        first = to_ms(datetime.fromisoformat(text(first_seen).replace("Z", "+00:00")))
        first -= first % bucket_ms
        if first < buckets[0]:
            out.append((buckets[0], buckets[0] - first))
    out += [(b, b - a) for a, b in zip(buckets, buckets[1:], strict=False) if b - a > bucket_ms]
    return tuple(out)


def _pairs(flat: list[Any]) -> dict[int, int]:
    """ZRANGE ... WITHSCORES as RESP2 returns it -> {member: score}."""
    return {int(flat[j]): int(float(flat[j + 1])) for j in range(0, len(flat), 2)}


@dataclass(frozen=True, slots=True)
class _Defined:
    """The definitions an evaluation runs, the version they were loaded at (which the
    write is checked against) and what they read of a profile."""

    segments: dict[str, Segment]
    version: str
    reads: Reads


@dataclass(frozen=True, slots=True)
class _Read:
    """A chunk as read: each profile's ``profile_view`` row and its due score."""

    rows: list[ProfileRow]
    dues: list[Any]


class SegmentEngine:
    def __init__(
        self, redis: Client, scripts: Scripts, settings: Settings, *, outbox: bool | None = None
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.cache = SegmentCache(redis, settings)
        self.cluster = is_cluster(redis)  # one profile per script call
        self.outbox = uses_outbox(redis, settings) if outbox is None else outbox
        self.relay = Relay(redis, scripts, settings)
        self.writer = TransitionWriter(redis, scripts, settings, self.relay, cluster=self.cluster)

    async def evaluate(self, cids: Iterable[str], now_ms: int) -> list[str]:
        """Evaluate every segment for ``cids``; returns the eventIds of the transitions."""
        pending = sorted(set(cids))
        emitted: list[str] = []
        for _ in range(MAX_RETRIES):
            if not pending:
                break
            segments = await self.cache.refresh()  # again on a retry: they may have changed
            # Taken with the definitions, before any await: another task may refresh.
            defined = _Defined(segments, self.cache.version, self.cache.reads)
            stale: list[str] = []
            chunks = [pending[i : i + READ_CHUNK] for i in range(0, len(pending), READ_CHUNK)]
            read = self._read(chunks[0], defined.reads)
            try:
                for i, chunk in enumerate(chunks):
                    view = await read
                    if i + 1 < len(chunks):
                        # Redis reads the next chunk while Python evaluates this one (the
                        # chunks share no profile; each write still checks the version).
                        read = self._read(chunks[i + 1], defined.reads)
                    outcome = await self._evaluate_chunk(chunk, view, defined, now_ms)
                    emitted += outcome.emitted
                    stale += outcome.stale
            finally:
                read.cancel()  # the read ahead, when an error ends the loop (else a no-op)
            pending = stale
        return emitted

    def _read(self, cids: list[str], reads: Reads) -> asyncio.Future[_Read]:
        """``profile_view`` of ``cids`` and their due scores, started now."""
        read = asyncio.ensure_future(self._view(cids, reads))
        read.add_done_callback(_retrieved)
        return read

    async def _view(self, cids: list[str], reads: Reads) -> _Read:
        """One round trip: the due scores (ZMSCORE, first: a profile marked due after it
        costs at most a needless write), then what the definitions read of the profiles:
        one ``profile_view`` call for all on one Redis, one per profile on a cluster."""
        # Every rule names its counters (rules.Reads: None stands for a reference read).
        counters = reads.counters if reads.counters is not None else frozenset()
        view = self.scripts.profile_view
        calls = [[cid] for cid in cids] if self.cluster else [cids]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(keys.SEGMENTS_DUE, cids)
            for call in calls:
                await view.queue(pipe, call, traits=reads.traits, counters=counters)
            replies = await pipe.execute()
        return _Read([row for reply in replies[1:] for row in view.decode(reply)], replies[0])

    async def _evaluate_chunk(
        self, cids: list[str], read: _Read, defined: _Defined, now_ms: int
    ) -> Outcome:
        checks = [(name, segment.check) for name, segment in defined.segments.items()]
        names = defined.segments.keys()
        now_iso = iso_ms(now_ms)
        bucket_ms = self.settings.counter_bucket_ms
        gone: list[str] = []
        writes: list[TransitionRequest] = []
        unrelayed: set[str] = set()  # profiles whose outbox holds entries
        for n, (cid, row, due_read) in enumerate(zip(cids, read.rows, read.dues, strict=True)):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # other tasks run (and the read ahead goes out)
            if row.outbox:  # events still to relay (a merged-away profile's too)
                unrelayed.add(cid)
            snap = parse_view(cid, row, bucket_ms, due_read)
            if snap is None:  # merged away or erased meanwhile: nothing to evaluate
                gone.append(cid)
                continue
            memberships = snap.memberships
            at_ms = snap.evaluation_ms(now_ms)
            changes, due = _changes(snap.view, memberships, checks, at_ms)
            dropped = sorted(
                name for name, member in memberships.items() if member and name not in names
            )
            if not changes and not dropped and due == snap.due:
                continue  # nothing to write: the steady state costs no script call
            writes.append(
                TransitionRequest(
                    cid=cid,
                    version=snap.version,
                    at_iso=now_iso if at_ms == now_ms else iso_ms(at_ms),
                    at_ms=at_ms,
                    due_ms=due,
                    wanted=changes,
                    who=snap.who,
                    dropped=dropped,
                    read_evaluations=snap.evaluations,
                )
            )
        if self.outbox:
            return await self.writer.outbox(writes, gone, unrelayed, defined.version, now_ms)
        outcome = await self.writer.direct(writes, gone, defined.version)
        if unrelayed:  # left by another protocol's scripts (or a switch of protocol)
            await self.relay.relay(unrelayed)
        return outcome


def _retrieved(read: asyncio.Future[Any]) -> None:
    """Marks the error of a read nobody awaits (cancelled by an error) as seen."""
    if not read.cancelled():
        read.exception()


def _changes(
    view: ProfileView, memberships: dict[str, bool], checks: list[tuple[str, Check]], now_ms: int
) -> tuple[dict[str, bool], int | None]:
    """The segments whose answer at ``now_ms`` differs from ``memberships`` (name ->
    member now), and the earliest due time of them all (None: time alone changes none)."""
    changes: dict[str, bool] = {}
    due: int | None = None
    get = memberships.get
    for name, check in checks:
        matches, next_change = check(view, now_ms)
        if get(name, False) != matches:
            changes[name] = matches
        if next_change is not None and (due is None or next_change < due):
            due = next_change
    return changes, due
