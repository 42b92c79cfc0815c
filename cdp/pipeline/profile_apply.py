"""The profile protocol: a partition batch applied by per-profile scripts (Redis Cluster).

On a cluster a script may only touch keys of one slot, all named in KEYS; a profile's
keys share its slot (``cdp:profile:{<cid>}...``), an identifier has its own
(``cdp:identifier:{<typed id>}``). So the identity work that ``apply_batch`` does in
one script is split here into plain commands and one-slot scripts, in an order that
keeps DESIGN.md's semantics under any crash (docs/cluster.md, "Applying a batch"):

1. **Resolve** (one pipelined round trip): GET every identifier of the batch,
   SMISMEMBER ``cdp:suppressed`` (events naming an erased identifier are discarded,
   counted ``suppressed``, acknowledged), and the partition's lease (fencing: a batch
   whose lease another worker holds is not applied).
2. **Fast events**: every identifier known, naming one profile. Grouped per profile
   (in order), one ``apply_profile`` per profile, all pipelined (a cluster pipeline
   sends each to its node). They change no identity, so applying them before the
   slow ones gives the state in-order processing gives. Each event asks the profile
   to link its identifiers: those it holds cost nothing; one it does not hold (a claim
   whose apply never came) is linked within the guard rails.
3. **Slow events**, one at a time in batch order: unknown identifiers and/or several
   owners (or a fast event that met a merged-away or missing profile). The guard
   rails decide the group exactly as ``resolve_links`` in ``lua/includes/identity.lua``
   does; losers are merged into the oldest by ``cdp.merge.merge`` (the cross-slot
   journal); unknown identifiers are claimed with ``SET NX`` for the target (a new
   profile: INCR ``cdp:seq:profile`` and ZADD ``cdp:profiles`` first). A lost claim
   releases this event's claims (``identifier_release``: compare-and-delete) and
   resolves again, at most ``ROUNDS`` times (then ``ProtocolBusy``: the batch is
   retried next tick). Then ``apply_profile`` with ``create``; the identifiers it
   refuses (guard rails) are released and the refusals recorded in ``cdp:merges``.
4. **FORWARDED** (the profile was merged away): an unfinished merge is finished
   (``cdp.merge.resume``), and the events are resolved again on the slow path. An
   identifier still naming a finished loser is a claim made while it was merged
   (the process died before releasing it): released, then claimed again.
   **GONE** (no profile hash): resolved again; a missing hash that an identifier names
   is created by ``apply_profile`` (``create``; a claim whose first apply never came).
5. **Due first**: ``ZADD cdp:segments:due LT`` of the profiles live events touch,
   before their apply (a crash after it costs one needless evaluation).
6. **Acknowledge**: XACK + the partition's metrics, one transaction in its slot. A
   crash before it redelivers the entries, and every applied event is found in its
   profile's ``seen``.

An event its profile's script refuses (CDP_POISON) raises that ``ResponseError`` once
the rest of the step is done, with the events applied before it counted (not
acknowledged): the worker applies the batch again event by event and parks the guilty
one (``workers.dead_letters``), as with ``apply_batch``.

``apply_partition`` runs in-process (the property tests) as in the worker
(``workers.ticking`` with ``apply-protocol`` ``profile``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from cdp import keys, merge
from cdp.connect import Client
from cdp.errors import CdpError
from cdp.events import StreamEvent, iso_ms
from cdp.pipeline.apply import ApplyContext, bucket_member, iso_of
from cdp.scripts import BatchResult, ProfileReply, Scripts, is_poison
from cdp.settings import Settings
from cdp.streams import add_once, text

ROUNDS = 5  # resolutions of one event before its batch is left for the next tick
NO_ACK = ""  # the entry id of an event that acknowledges nothing (workers.state)
MERGES_MAXLEN = 100_000  # as identity.lua's XADD of cdp:merges

_encoder = msgspec.json.Encoder()
_APPLIED_BEFORE = re.compile(r"\(after (\d+) applied\)$")


def _applied_before(poison: Exception) -> int:
    """How many events of the refused ``apply_profile`` call were applied before the
    guilty one (its CDP_POISON says so)."""
    found = _APPLIED_BEFORE.search(str(poison))
    return int(found.group(1)) if found else 0


class ProtocolBusy(CdpError):
    """An event could not be resolved in ``ROUNDS`` rounds (claims lost to other
    workers, a merge in progress): nothing is wrong with it, its batch is retried."""


def counter_names(event: StreamEvent) -> list[str]:
    """The counters an event counts in (``includes/apply.lua``'s ``count_event``)."""
    names = [keys.SEEN]
    if event.type == "TRACK":
        names += [event.name or "", keys.ALL_TRACK]
    elif event.type == "PAGE":
        names.append("$page")
    elif event.type == "SCREEN":
        names.append("$screen")
    return names


@dataclass(slots=True)
class _Event:
    """One event of the batch, as the protocol carries it."""

    entry_id: str
    event: StreamEvent
    ids: list[str]
    row: list[Any]  # as apply_profile reads it (ARGV[6])
    counters: list[str]
    live: bool  # not a historical import: its profile is marked due
    fresh: str | None = None  # the new profile issued for it, kept across rounds

    @property
    def event_id(self) -> str:
        return self.event.eventId


def _prepare(event: StreamEvent, entry_id: str, settings: Settings) -> _Event:
    traits: list[str] = []
    for name, value in (event.traits or {}).items():
        traits.append(name)
        traits.append(_encoder.encode(value).decode())
    ts = event.ts
    row = [
        event.eventId,
        iso_of(ts),
        f"{ts:013d}",
        bucket_member(ts, settings.counter_bucket_ms),
        event.type,
        traits,
        event.name or "",
    ]
    return _Event(
        entry_id,
        event,
        event.identifiers(settings.blocked_values),
        row,
        counter_names(event),
        event.mode != "import",
    )


@dataclass(slots=True)
class _Owner:
    """What the guard rails read of a profile an event's identifiers name."""

    cid: str
    user: str | None
    users: int
    anons: int
    merged_into: str | None
    merge_state: str
    exists: bool


@dataclass(slots=True)
class _Records:
    """Refusals of one event, for ``cdp:merges`` (written once each: ``add_once``)."""

    event: _Event
    rows: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def refuse(self, reason: str, profile: str, **extra: str) -> None:
        fields = {"status": "refused", "reason": reason, **extra, "profile": profile}
        fields["eventId"] = self.event.event_id
        fields["ts"] = self.event.row[1]
        name = f"refused:{self.event.event_id}:{profile}:{extra.get('identifier', '')}:{reason}"
        self.rows.append((name, fields))


class _Run:
    """One partition batch through the protocol."""

    def __init__(
        self, redis: Client, scripts: Scripts, settings: Settings, ctx: ApplyContext
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.ctx = ctx
        self.bucket, self.expire_in = ctx.dedup_bucket(settings)
        cutoff_ms = max(ctx.now_ms - settings.counter_window_ms, 0)
        self.cutoff = bucket_member(cutoff_ms, settings.counter_bucket_ms)
        self.now_iso = iso_ms(ctx.now_ms)
        self.dirty_due = ctx.now_ms + settings.lease_ttl_ms
        self.limits = _encoder.encode(
            {"maxEmails": settings.max_emails, "maxUsers": settings.max_user_ids}
        )
        self.applied = 0
        self.duplicates = 0
        self.discarded = 0
        self.profiles: list[str] = []
        self.poison: Exception | None = None
        self.moved: set[str] = set()  # identifiers the batch's slow events resolved
        self.merged = False  # a slow event merged (identifiers of others moved)

    # -- resolve ---------------------------------------------------------------

    async def resolve(
        self, events: Sequence[_Event], lease: str | None = None, worker_id: str = ""
    ) -> tuple[dict[str, str | None], set[str], bool]:
        """The owner of every identifier of ``events`` (None: unknown), the suppressed
        ones, and whether the lease is still ours. An identifier key of another type
        refuses the first event naming it (CDP_POISON)."""
        distinct = list(dict.fromkeys(i for ev in events for i in ev.ids))
        async with self.redis.pipeline(transaction=False) as pipe:
            if lease:
                pipe.get(lease)
            if distinct:
                pipe.smismember(keys.SUPPRESSED, distinct)
                for identifier in distinct:
                    pipe.get(keys.identifier(identifier))
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        held = True
        if lease:
            held = text(replies.pop(0) or b"") == worker_id
        if not distinct:
            return {}, set(), held
        hits = replies[0]
        if isinstance(hits, Exception):
            raise hits
        suppressed = {i for i, hit in zip(distinct, hits, strict=True) if int(hit)}
        owners: dict[str, str | None] = {}
        for identifier, reply in zip(distinct, replies[1:], strict=True):
            if isinstance(reply, Exception):
                if "WRONGTYPE" not in str(reply):
                    raise reply
                culprit = next(ev for ev in events if identifier in ev.ids)
                raise ResponseError(
                    f"CDP_POISON event {culprit.event_id}: an identifier key holds the "
                    f"wrong type (WRONGTYPE)"
                )
            owners[identifier] = None if reply is None else text(reply)
        return owners, suppressed, held

    # -- apply_profile ---------------------------------------------------------

    async def _queue(
        self, pipe: Any, cid: str, events: Sequence[_Event], links: list[list[str]], create: bool
    ) -> None:
        await self.scripts.apply_profile.queue(pipe, **self._arguments(cid, events, links, create))

    async def _call(
        self, cid: str, events: Sequence[_Event], links: list[list[str]], *, create: bool
    ) -> ProfileReply:
        """One ``apply_profile`` on its own (EVALSHA, no pipeline: no SCRIPT EXISTS)."""
        return await self.scripts.apply_profile(**self._arguments(cid, events, links, create))

    def _arguments(
        self, cid: str, events: Sequence[_Event], links: list[list[str]], create: bool
    ) -> dict[str, Any]:
        """The named arguments of one ``apply_profile`` call."""
        return {
            "cid": cid,
            "counter_names": list(dict.fromkeys(n for ev in events for n in ev.counters)),
            "dedup_bucket": self.bucket,
            "seen_expire_ms": self.expire_in,
            "counter_cutoff": self.cutoff,
            "now_iso": self.now_iso,
            "create": create,
            "events": _encoder.encode([ev.row for ev in events]),
            "links": _encoder.encode(links),
            "limits": self.limits,
        }

    async def _mark_due(self, cids: Iterable[str]) -> None:
        due = {cid: self.dirty_due for cid in cids}
        if due:
            await self.redis.zadd(keys.SEGMENTS_DUE, due, lt=True)

    def _settle(self, cid: str, ev: _Event, applied: bool) -> None:
        if applied:
            self.applied += 1
            if ev.live:
                self.profiles.append(cid)
        else:
            self.duplicates += 1

    async def _release(self, ids: Iterable[str], cid: str) -> None:
        ids = list(ids)
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for identifier in ids:
                await self.scripts.identifier_release.queue(pipe, identifier, cid)
            await pipe.execute()

    async def _write_records(self, records: Sequence[_Records]) -> None:
        rows = [row for r in records for row in r.rows]
        if rows:
            await add_once(self.redis, keys.MERGES, rows, MERGES_MAXLEN, self.settings.dedup_ttl_ms)

    async def _handed_back(
        self, cid: str, ev: _Event, back: Sequence[tuple[str, str]], claimed: Sequence[str]
    ) -> _Records:
        """Release what ``apply_profile`` handed back: refused by a guard rail (and
        recorded), or not linked after a duplicate (only a claim of this caller's own:
        another claim naming the profile may be about to be linked by its claimer)."""
        records = _Records(ev)
        release = []
        for identifier, reason in back:
            if reason:
                release.append(identifier)
                records.refuse(reason, cid, identifier=identifier)
            elif identifier in claimed:
                release.append(identifier)
        await self._release(release, cid)
        return records

    # -- fast events -----------------------------------------------------------

    async def apply_fast(
        self, events: Sequence[_Event], owners: dict[str, str | None]
    ) -> list[_Event]:
        """Apply the events whose identifiers all name one profile, one call per
        profile; returns the others (and those that met FORWARDED or GONE), in order."""
        groups: dict[str, list[_Event]] = {}
        slow: list[_Event] = []
        for ev in events:
            cids = {owners[i] for i in ev.ids}
            cid = next(iter(cids))
            if len(cids) == 1 and cid is not None:
                groups.setdefault(cid, []).append(ev)
            else:
                slow.append(ev)
        if not groups:
            return slow
        await self._mark_due(cid for cid, evs in groups.items() if any(e.live for e in evs))
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid, evs in groups.items():
                await self._queue(pipe, cid, evs, [ev.ids for ev in evs], create=False)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        records: list[_Records] = []
        for (cid, evs), reply in zip(groups.items(), replies, strict=True):
            if isinstance(reply, Exception):
                if not is_poison(reply):
                    raise reply
                before = _applied_before(reply)
                self.applied += before
                if before and any(ev.live for ev in evs):
                    self.profiles.append(cid)
                self.poison = self.poison or reply
                continue
            result = ProfileReply.decode(reply)
            if result.status == "OK":
                for ev, (applied, back) in zip(evs, result.events, strict=True):
                    self._settle(cid, ev, applied)
                    if back:
                        records.append(await self._handed_back(cid, ev, back, ()))
                continue
            if result.status == "FORWARDED":
                await self._finish_merge(cid, result.merge_state)
                self.moved.update(i for ev in evs for i in ev.ids)  # resolved again
            slow.extend(evs)
        await self._write_records(records)
        order = {id(ev): n for n, ev in enumerate(events)}
        slow.sort(key=lambda ev: order[id(ev)])
        return slow

    async def apply_all(self, events: Sequence[_Event], owners: dict[str, str | None]) -> None:
        """Passes until every event is applied: the fast events of the pass, then the
        slow ones that interact with no earlier slow event of the pass (no identifier,
        no owner in common: their order does not matter), each alone; the others wait
        for the next pass, where the events of a profile a slow event just created or
        linked are fast. Raises the first CDP_POISON met."""
        pending = list(events)
        while pending:
            slow = await self.apply_fast(pending, owners)
            if self.poison is not None:
                raise self.poison
            pending = []
            seen_ids: set[str] = set()
            seen_owners: set[str] = set()
            for ev in slow:
                mine = {c for i in ev.ids if (c := owners.get(i)) is not None}
                if seen_ids.isdisjoint(ev.ids) and seen_owners.isdisjoint(mine):
                    await self.apply_slow(ev, owners)
                    if self.poison is not None:
                        raise self.poison
                else:
                    pending.append(ev)
                seen_ids.update(ev.ids)
                seen_owners.update(mine)
            if pending:
                self.moved.clear()
                self.merged = False
                owners, _, _ = await self.resolve(pending)

    async def _finish_merge(self, loser: str, state: str) -> None:
        if state != "done":
            await merge.resume(self.redis, self.scripts, self.settings, loser, self.ctx.now_ms)

    # -- slow events -----------------------------------------------------------

    async def apply_slow(self, ev: _Event, known: dict[str, str | None]) -> None:
        """Resolve and apply one slow event; its first round reads the owners the
        batch's resolve found (``known``) unless an earlier slow event of the batch may
        have moved them (it named one of its identifiers, or merged). A stale owner
        costs a round: claims are compare-and-set, merges and applies check the state
        they change."""
        fresh = self.merged or not self.moved.isdisjoint(ev.ids)
        owners_of = None if fresh else known
        for _ in range(ROUNDS):
            if owners_of is None:
                owners_of, _, _ = await self.resolve([ev])
            if await self._try_slow(ev, owners_of):
                self.moved.update(ev.ids)
                return
            owners_of = None
        raise ProtocolBusy(f"event {ev.event_id}: not resolved in {ROUNDS} rounds")

    async def _read_owners(self, cids: Sequence[str]) -> dict[str, _Owner]:
        if not cids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hmget(
                    keys.profile(cid),
                    ["user", "users", "anons", "mergedInto", "mergeState", "createdAt"],
                )
            rows: list[Any] = await pipe.execute()
        out = {}
        for cid, row in zip(cids, rows, strict=True):
            user, users, anons, into, state, created = (None if v is None else text(v) for v in row)
            out[cid] = _Owner(
                cid, user, int(users or 0), int(anons or 0), into, state or "done", bool(created)
            )
        return out

    async def _try_slow(self, ev: _Event, owners_of: dict[str, str | None]) -> bool:
        """One resolution of a slow event (``owners_of``: its identifiers' owners);
        False when it must be resolved again."""
        cids = [owners_of[i] for i in ev.ids]
        order = list(dict.fromkeys(c for c in cids if c is not None))
        owners = await self._read_owners(order)
        for o in owners.values():
            naming = [i for i, c in zip(ev.ids, cids, strict=True) if c == o.cid]
            if o.merged_into is not None:
                if o.merge_state == "done":
                    await self._release(naming, o.cid)  # claims made while it was merged
                else:
                    await self._finish_merge(o.cid, o.merge_state)
                return False
            if not o.exists and len(order) > 1:
                await self._complete(o.cid, naming)
                return False
        records = _Records(ev)
        target = await self._group(ev, cids, owners, records)
        if target is None:
            return False
        free = [i for i, c in zip(ev.ids, cids, strict=True) if c is None]
        claimed = await self._claim(free, target, due=ev.live)
        if claimed is None:
            return False
        link = claimed + [i for i, c in zip(ev.ids, cids, strict=True) if c == target]
        try:
            result = await self._call(target, [ev], [link], create=True)
        except ResponseError as exc:
            if not is_poison(exc):
                raise
            self.poison = self.poison or exc
            return True
        if result.status != "OK":  # FORWARDED: merged away meanwhile
            await self._release(claimed, target)
            await self._finish_merge(target, result.merge_state)
            return False
        applied, back = result.events[0]
        self._settle(target, ev, applied)
        handed = await self._handed_back(target, ev, back, claimed)
        records.rows.extend(handed.rows)
        await self._write_records([records])
        return True

    async def _complete(self, cid: str, ids: list[str]) -> None:
        """A profile an identifier names whose hash never appeared (its claimer died
        before its first apply): created, with the identifiers naming it linked."""
        result = await self._call(cid, [], [ids], create=True)
        if result.status == "OK":
            await self._release((i for i, reason in result.events[0][1] if reason), cid)

    async def _claim(self, free: Sequence[str], target: str, *, due: bool) -> list[str] | None:
        """Claim ``free`` identifiers for ``target`` (``due``: and mark it due, in the
        same round trip); None (and every claim of this event released) when another
        profile took one first."""
        if not free:
            if due:
                await self._mark_due([target])
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            if due:
                pipe.zadd(keys.SEGMENTS_DUE, {target: self.dirty_due}, lt=True)
            for identifier in free:
                pipe.set(keys.identifier(identifier), target, nx=True)
            replies: list[Any] = await pipe.execute()
        if due:
            replies = replies[1:]
        claimed = [i for i, ok in zip(free, replies, strict=True) if ok]
        if len(claimed) < len(free):
            await self._release(claimed, target)
            return None
        return claimed

    async def _new_profile(self, ev: _Event) -> str:
        """A new canonical id, listed in ``cdp:profiles`` before anything names it."""
        if ev.fresh is None:
            seq = int(await self.redis.incr(keys.PROFILE_SEQ))
            cid = f"p{seq}"
            await self.redis.zadd(keys.PROFILES, {cid: seq})
            ev.fresh = cid
        return ev.fresh

    def _guard(
        self, ev: _Event, cids: Sequence[str | None], owners: dict[str, _Owner], records: _Records
    ) -> list[str]:
        """The owners the guard rails let merge, in the event's identifier order (as
        ``resolve_links`` in identity.lua); refusals go to ``records``."""
        s = self.settings
        anon_only: dict[str, bool] = {}
        for identifier, cid in zip(ev.ids, cids, strict=True):
            if cid is not None:
                is_anon = identifier.startswith("anon:")
                anon_only[cid] = anon_only.get(cid, True) and is_anon
        first = ev.ids[0] if ev.ids else ""
        group_user = first if first.startswith("user:") else None
        group_users = 1 if group_user and cids[0] is None else 0
        group: list[str] = []
        for cid in owners:
            o = owners[cid]
            reason = ""
            if o.user and group_user and o.user != group_user:
                if not s.merge_different_users:
                    reason = "different userIds"
                elif group_users + o.users > s.max_user_ids:
                    reason = "userId limit"
            elif anon_only[cid] and group and o.anons > s.max_anonymous_ids:
                reason = "anonymousId limit"
            if reason:
                records.refuse(reason, cid)
                continue
            group.append(cid)
            if o.user:
                group_user = group_user or o.user
                group_users += o.users
        return group

    async def _group(
        self, ev: _Event, cids: Sequence[str | None], owners: dict[str, _Owner], records: _Records
    ) -> str | None:
        """The profile the event applies to, losers merged into the oldest of its group
        (a new profile when the group is empty); None: resolve again."""
        group = self._guard(ev, cids, owners, records)
        if not group:
            return await self._new_profile(ev)
        group.sort(key=lambda c: int(c[1:]))
        survivor = target = group[0]
        user_owner = cids[0] if ev.ids[0].startswith("user:") else None
        for loser in group[1:]:
            merges = await self.redis.hget(keys.profile(survivor), "merges")
            if int(merges or 0) >= self.settings.max_merges:
                records.refuse("merge limit", loser, survivor=survivor)
                if loser == user_owner:
                    target = loser
                continue
            self.merged = True
            outcome = await merge.merge(
                self.redis,
                self.scripts,
                self.settings,
                loser,
                survivor,
                ev.event_id,
                ev.row[1],
                self.ctx.now_ms,
            )
            if outcome.status == "gone" or outcome.survivor != survivor:
                await self._write_records([records])
                records.rows.clear()
                return None
        return target

    # -- acknowledge -----------------------------------------------------------

    async def acknowledge(self, partition: int, acks: Sequence[str], *, xack: bool) -> None:
        """XACK the batch's entries (``xack``) and count its events, one transaction in
        the partition's slot."""
        counts = {
            "processed": self.applied,
            "dedup_hits": self.duplicates,
            "suppressed": self.discarded,
        }
        counts = {k: v for k, v in counts.items() if v}
        acks = list(acks) if xack else []
        if not acks and not counts:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            if acks:
                pipe.xack(keys.stream(partition), keys.GROUP, *acks)
            for name, value in counts.items():
                pipe.hincrby(keys.metrics(partition), name, value)
            await pipe.execute()


async def apply_partition(
    redis: Client,
    scripts: Scripts,
    settings: Settings,
    ctx: ApplyContext,
    partition: int,
    batch: Sequence[tuple[str, StreamEvent]],
) -> BatchResult:
    """Apply a partition's ordered events through the profile protocol and acknowledge
    them (an entry id ``""`` acknowledges nothing); ``ctx.worker_id`` "" skips the
    lease check. Raises the ``ResponseError`` CDP_POISON of an event its profile's
    script refused (the events before it applied and counted, none acknowledged), a
    ``ProtocolBusy`` (not resolved in ``ROUNDS`` rounds) or any RedisError: the caller
    retries the batch."""
    run = _Run(redis, scripts, settings, ctx)
    events = [_prepare(ev, entry_id, settings) for entry_id, ev in batch]
    lease = keys.lease(partition) if ctx.worker_id else None
    owners, suppressed, held = await run.resolve(events, lease, ctx.worker_id)
    if not held:
        return BatchResult(lease_lost=True)
    todo = []
    for ev in events:
        if not ev.ids:
            continue  # changes nothing: nothing to protect, no record
        if suppressed.intersection(ev.ids):
            run.discarded += 1
        else:
            todo.append(ev)
    try:
        await run.apply_all(todo, owners)
    except ResponseError as exc:
        if is_poison(exc) and run.applied:
            run.duplicates = run.discarded = 0  # the retry counts them
            await run.acknowledge(partition, (), xack=False)
        raise
    await run.acknowledge(partition, [ev.entry_id for ev in events if ev.entry_id], xack=True)
    return BatchResult(applied=run.applied, duplicates=run.duplicates, profiles=tuple(run.profiles))
