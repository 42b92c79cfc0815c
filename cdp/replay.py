"""Replay: dropped and parked events back into the pipeline, on purpose, once each.

Beside the flow: an event the workers dropped as too late (``cdp:events:dropped``) or
parked because its apply failed (``cdp:events:dead``) waits there as a record with the
fields ``e`` (the event as it was on its partition stream), ``reason``, ``partition``
and ``entryId`` (``workers/dead_letters.py``). ``replay`` walks the records of one of
the two streams, oldest first, optionally from a time on and for some eventIds only,
and publishes each event again to the partition stream of its routing id, as an
*import*: never dropped as late again, and, like ``POST /v1/import``, applied by LWW
without segment ENTER/EXIT for the past (the profile catches up at its next live
evaluation). The eventId is kept, so dedup makes the replay of something applied
meanwhile harmless.

Each record is published and marked replayed by one script (``lua/replay_record-3.lua``)
in the slot of the partition it is published to (the marks are per partition,
``cdp:replayed:<source>:{pN}``, so the script runs on a Redis Cluster too): a crash
leaves it either replayed and marked or neither, and a second run, or two at once,
replay it at most once. The marks of before (``cdp:replayed:<source>``, one key) are
still read while they exist, never written. A record whose ``e`` is not
an event (undecodable bytes, or nothing) cannot be replayed: it is reported as skipped
with the reason. Marks older than the source's oldest record are forgotten, so they
never outgrow the capped stream they describe.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdp import keys
from cdp.connect import Client, connect
from cdp.errors import EventRejected
from cdp.events import StreamEvent, parse_time, stream_decoder, stream_encoder
from cdp.export import ProgressBar
from cdp.identity import partition_of, routing_id
from cdp.scripts import Scripts
from cdp.settings import Settings, parse_duration_ms
from cdp.streams import last_id, text

SOURCES = {"dropped": keys.DROPPED, "dead": keys.DEAD}
CHUNK = 500
# ``since``: an RFC 3339 time, or a duration back from now (also the OpenAPI pattern).
SINCE_DURATION = r"^[0-9]{1,12}(ms|s|m|h|d)$"
_SINCE_DURATION = re.compile(SINCE_DURATION)

REPLAYED = "replayed"
WOULD_REPLAY = "would replay"
ALREADY = "already replayed"
SKIPPED = "skipped"

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one selected record."""

    record_id: str
    event_id: str | None
    action: str  # REPLAYED, WOULD_REPLAY, ALREADY or SKIPPED
    reason: str  # why it was dropped or parked; for SKIPPED, why it cannot be replayed
    partition: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "recordId": self.record_id,
            "eventId": self.event_id,
            "action": self.action,
            "reason": self.reason,
            "partition": self.partition,
        }


@dataclass(slots=True)
class Report:
    source: str
    dry_run: bool
    scanned: int = 0  # records read
    selected: int = 0  # of those, the ones --since / --event-id chose
    replayed: int = 0  # published (for a dry run: would be)
    already: int = 0
    skipped: int = 0
    outcomes: list[Outcome] = field(default_factory=list)  # the first ``keep``
    truncated: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dryRun": self.dry_run,
            "scanned": self.scanned,
            "selected": self.selected,
            "replayed": self.replayed,
            "alreadyReplayed": self.already,
            "skipped": self.skipped,
            "records": [o.as_json() for o in self.outcomes],
            "truncated": self.truncated,
        }


class ReplayRejected(EventRejected):
    """A bad source, since or eventIds (400 over HTTP, exit status 2 in the CLI)."""


MAX_EVENT_IDS = 10_000
_FIELDS = {"source", "since", "eventIds", "dryRun"}


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """The body of ``POST /cdp/replay`` (the OpenAPI document's ``ReplayRequest``)."""

    source: str
    since: str | None = None
    event_ids: tuple[str, ...] = ()
    dry_run: bool = False

    @classmethod
    def parse(cls, body: Any) -> ReplayRequest:
        if not isinstance(body, dict):
            raise ReplayRejected('expected {"source": "dropped" | "dead", ...}')
        unknown = set(body) - _FIELDS
        if unknown:
            raise ReplayRejected(f"unknown fields {sorted(unknown)}")
        source = body.get("source")
        if not isinstance(source, str) or source not in SOURCES:
            raise ReplayRejected(f"`source` must be one of {', '.join(SOURCES)}")
        since = body.get("since")
        if since is not None:
            _since_form(since)
        event_ids = body.get("eventIds")
        if event_ids is not None and (
            not isinstance(event_ids, list)
            or len(event_ids) > MAX_EVENT_IDS
            or not all(isinstance(e, str) for e in event_ids)
        ):
            raise ReplayRejected(f"`eventIds` must be a list of at most {MAX_EVENT_IDS} strings")
        dry_run = body.get("dryRun", False)
        if not isinstance(dry_run, bool):
            raise ReplayRejected("`dryRun` must be true or false")
        return cls(source, since, tuple(event_ids or ()), dry_run)


def _since_form(raw: Any) -> int | None:
    """The duration back from now (ms) of a ``since``, or None for a time; else rejected."""
    if isinstance(raw, str) and _SINCE_DURATION.fullmatch(raw):
        return parse_duration_ms(raw, "since")
    try:
        parse_time(raw, "since", event_time=False)
    except EventRejected:
        raise ReplayRejected(
            f"`since` must be an RFC 3339 time (2025-10-04T10:00:00Z) or a duration back "
            f"from now (30m, 24h, 7d): {raw!r}"
        ) from None
    return None


async def since_ms(redis: Client, raw: str | None) -> int | None:
    """``since`` -> epoch ms of the oldest record to consider (Redis' clock: record ids
    are stamped by it)."""
    if raw is None:
        return None
    back = _since_form(raw)
    if back is not None:
        seconds, micros = await redis.time()
        return max(0, seconds * 1000 + micros // 1000 - back)
    return max(0, parse_time(raw, "since", event_time=False))


async def replay(
    redis: Client,
    settings: Settings,
    source: str,
    *,
    since: int | None = None,
    event_ids: Collection[str] = (),
    dry_run: bool = False,
    progress: Progress | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    keep: int = 1000,
) -> Report:
    """Replay the chosen records of ``cdp:events:<source>``; see the module docstring.

    ``since``: epoch ms (records from then on); ``event_ids``: only these events;
    ``progress(read, total)`` after each chunk; ``on_outcome`` for every selected
    record; the report keeps the first ``keep`` outcomes.
    """
    if not isinstance(source, str) or source not in SOURCES:
        raise ReplayRejected(f"`source` must be one of {', '.join(SOURCES)}, got {source!r}")
    stream = SOURCES[source]
    report = Report(source, dry_run)
    wanted = set(event_ids)
    scripts = Scripts(redis)
    total = int(await redis.xlen(stream))
    legacy = await _forget_old_marks(redis, stream, source, settings.partitions)
    start = f"{since}-0" if since else "-"
    # The walk ends at the newest record of now: an event replayed and parked again
    # is a new record, for the next replay, never a loop within this one.
    end = await last_id(redis, stream)
    while True:
        rows: Any = await redis.xrange(stream, start, end, count=CHUNK)
        if not rows:
            break
        start = "(" + text(rows[-1][0])
        report.scanned += len(rows)
        chosen = []
        for raw_id, fields in rows:
            record = _read(text(raw_id), fields)
            if wanted and record.event_id not in wanted:
                continue
            chosen.append(record)
        report.selected += len(chosen)
        marked = await _marks(redis, settings, source, chosen, legacy)
        to_publish = []
        for record, mark in zip(chosen, marked, strict=True):
            if record.event is None:
                _note(report, record.outcome(SKIPPED), on_outcome, keep)
            elif mark is not None:
                _note(report, record.outcome(ALREADY), on_outcome, keep)
            elif dry_run:
                _note(report, record.outcome(WOULD_REPLAY, settings), on_outcome, keep)
            else:
                to_publish.append(record)
        if to_publish:
            async with redis.pipeline(transaction=False) as pipe:
                for record in to_publish:
                    await _queue_replay(pipe, scripts, settings, source, record)
                replies = await pipe.execute()
            entry_ids = [scripts.replay_record.decode(reply) for reply in replies]
            for record, entry_id in zip(to_publish, entry_ids, strict=True):
                action = REPLAYED if entry_id else ALREADY  # another replay got there first
                _note(report, record.outcome(action, settings), on_outcome, keep)
        if progress is not None:
            progress(report.scanned, max(total, report.scanned))
    return report


@dataclass(frozen=True, slots=True)
class _Record:
    record_id: str
    reason: str
    event: StreamEvent | None  # None: nothing to replay (``reason`` then says why)
    event_id: str | None

    def partition(self, settings: Settings) -> int:
        assert self.event is not None
        event = self.event
        return partition_of(
            routing_id(event.userId, event.anonymousId, event.email), settings.partitions
        )

    def outcome(self, action: str, settings: Settings | None = None) -> Outcome:
        partition = self.partition(settings) if settings is not None else None
        return Outcome(self.record_id, self.event_id, action, self.reason, partition)


def _read(record_id: str, fields: dict[bytes, bytes]) -> _Record:
    reason = text(fields.get(b"reason", b""))
    raw = fields.get(b"e")
    if not raw:
        return _Record(record_id, f"no event in the record ({reason})", None, None)
    try:
        event = stream_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return _Record(record_id, f"not an event, cannot be replayed: {exc} ({reason})", None, None)
    return _Record(record_id, reason, event, event.eventId)


def _note(
    report: Report, outcome: Outcome, on_outcome: Callable[[Outcome], None] | None, keep: int
) -> None:
    if outcome.action in (REPLAYED, WOULD_REPLAY):
        report.replayed += 1
    elif outcome.action == ALREADY:
        report.already += 1
    else:
        report.skipped += 1
    if len(report.outcomes) < keep:
        report.outcomes.append(outcome)
    else:
        report.truncated = True
    if on_outcome is not None:
        on_outcome(outcome)


async def _marks(
    redis: Client, settings: Settings, source: str, chosen: list[_Record], legacy: bool
) -> list[Any]:
    """Per record, its mark (None: not replayed yet): in its partition's marks, or in the
    marks of before (``legacy``: they exist)."""
    async with redis.pipeline(transaction=False) as pipe:
        for record in chosen:
            partition = record.partition(settings) if record.event is not None else 0
            pipe.zscore(keys.replayed(source, partition), record.record_id)
            if legacy:
                pipe.zscore(keys.replayed_legacy(source), record.record_id)
        replies = await pipe.execute()
    if not legacy:
        return list(replies)
    pairs = zip(replies[::2], replies[1::2], strict=True)
    return [new if new is not None else old for new, old in pairs]


async def _queue_replay(
    pipe: Any, scripts: Scripts, settings: Settings, source: str, record: _Record
) -> None:
    """One ``replay_record`` call: the event as an import, to its partition's stream."""
    assert record.event is not None
    body = stream_encoder.encode(msgspec.structs.replace(record.event, mode="import"))
    partition = record.partition(settings)
    await scripts.replay_record.queue(
        pipe,
        stream=keys.stream(partition),
        marks=keys.replayed(source, partition),
        metrics=keys.metrics(partition),
        record_id=record.record_id,
        record_ms=record.record_id.split("-")[0],
        event=body,
    )


async def _forget_old_marks(redis: Client, stream: str, source: str, partitions: int) -> bool:
    """Marks of records trimmed from the capped stream can never be needed again (each
    partition's, one command each). Returns whether the marks of before still exist."""
    oldest: Any = await redis.xrange(stream, "-", "+", count=1)
    first_ms = int(text(oldest[0][0]).split("-")[0]) if oldest else None
    marks = [keys.replayed_legacy(source), *(keys.replayed(source, p) for p in range(partitions))]
    async with redis.pipeline(transaction=False) as pipe:
        for key in marks:
            if first_ms is None:
                pipe.delete(key)
            else:
                pipe.zremrangebyscore(key, "-inf", f"({first_ms}")
        pipe.exists(keys.replayed_legacy(source))
        *_, legacy = await pipe.execute()
    return bool(legacy)


def main_replay(
    settings: Settings, source: str, since: str | None, event_ids: list[str], dry_run: bool
) -> int:
    """``cdp replay``: a dry run lists the records (JSON lines on stdout); a real one
    shows a progress bar on stderr when it is a terminal, then the counts."""
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not dry_run else None

    def show(outcome: Outcome) -> None:
        if dry_run:
            print(json.dumps(outcome.as_json()), flush=True)
        elif outcome.action == SKIPPED:
            if bar is not None:
                bar.finish()
            print(f"cdp: skipped {outcome.record_id}: {outcome.reason}", file=sys.stderr)

    async def run() -> Report:
        redis = await connect(settings, socket_connect_timeout=2, socket_timeout=30)
        try:
            start = await since_ms(redis, since)
            return await replay(
                redis,
                settings,
                source,
                since=start,
                event_ids=event_ids,
                dry_run=dry_run,
                progress=bar,
                on_outcome=show,
                keep=0,
            )
        finally:
            await redis.aclose()

    started = time.monotonic()
    try:
        report = asyncio.run(run())
    finally:
        if bar is not None:
            bar.finish()
    verb = "would replay" if dry_run else "replayed"
    print(
        f"cdp: {verb} {report.replayed} of {report.selected} records chosen from "
        f"{SOURCES[source]} ({report.already} already replayed, {report.skipped} skipped, "
        f"{report.scanned} read) in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    return 0
