"""Erasure (the right to be forgotten) as a job of ordered, idempotent steps.

``DELETE /cdp/profiles/{id}`` (``cdp.api.erasure``) starts a job, ``cdp:job:{<id>}``,
and runs it; each step touches the keys of one slot (or is a plain command on one
key), so the job runs alike on one Redis and on a Redis Cluster. The job hash records
the last step done; a process killed between two steps leaves the job in
``cdp:erasures:open``, and the sweeper (``workers.roles``) resumes it from that step
under the job's lease (``cdp:job:{<id>}:lease``): every step can be run again without
effect, so a step interrupted half-way is simply run again. The steps, in order:

1. ``suppressed``: the profile's identifiers go to ``cdp:suppressed`` (from now on an
   event naming one is discarded, buffered and pending ones too) and to the job's own
   set (``cdp:job:{<id>}:identifiers``: the purge needs them after the profile is gone);
2. ``unindexed``: each identifier key is deleted if it still names the profile
   (``identifier_release``, compare-and-delete, in the identifier's slot);
3. ``erased``: the cross-slot merges into the profile still open are finished first
   (``cdp.merge.resume``: the loser's state and identifiers land in the profile and
   are erased with it); then ``erase_profile`` in the profile's slot: every
   membership the profile is in ends with an EXIT (reason "erased") pushed to its
   outbox with the member change, and its state is deleted, atomically; the hash
   becomes a marker of the job with the counts. Merged away meanwhile: that merge is
   finished, and the job moves to the survivor and starts again at step 1;
4. ``resuppressed`` / ``reunindexed``: steps 1 and 2 again for identifiers linked to
   the profile between step 1 and step 3;
5. ``relayed``: the outbox's records go to their stream once each and their member
   change is applied to the segment's members zset, by the relay every outbox has
   (``cdp.segments.outbox``: marked by their eventId, popped once relayed);
6. ``pointers``: the forward pointers of the ids merged into the profile are deleted;
7. ``unlisted``: the profile leaves ``cdp:profiles`` and ``cdp:segments:due``;
8. ``audited``: one record in ``cdp:audit`` (``add_once``, named ``erase:<job>``);
9. ``cleared``: the marker, the identifiers set, the merged set, the outbox (empty
   by now) and its relay lease;
10. ``purged``: the person's events leave ``cdp:events:dropped`` and
    ``cdp:events:dead``, the merge records about its profiles leave ``cdp:merges``,
    and the refused requests whose body holds one of its identifiers' values leave
    ``cdp:rejections``; the job is done.

Why the EXITs go through the outbox rather than straight to ``cdp:segment-events``
with ``add_once`` from Python: pushing them in the script that deletes the
memberships makes "the memberships at the instant of the erasure" and "the EXITs
owed" one atomic fact. Emitting them from Python before the delete would leave a
window in which an evaluation changes a membership between the two; after the
delete, the memberships would be gone. The outbox is the cluster protocol's own place
for records owed to another slot, so the sweeper's relay of leftovers delivers them
too (same record ids, same marks: once).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from cdp import faults, keys, merge
from cdp.clock import wall_ms
from cdp.connect import Client
from cdp.errors import ErasureStuck
from cdp.events import iso_ms
from cdp.identity import typed_identifiers
from cdp.scripts import Scripts
from cdp.segments.outbox import Relay
from cdp.settings import Settings
from cdp.streams import add_once, text

log = structlog.get_logger("cdp.erasure")

JOB_TTL_S = 7 * 86_400
PURGE_CHUNK = 1000
AUDIT_MAXLEN = 1_000_000
# How long the marks of the records written once are kept: longer than any job can
# wait for its resumption (the job itself is kept 7 days).
AUDIT_KEEP_MS = JOB_TTL_S * 1000
RELAY_ATTEMPTS = 20  # waits, a twentieth of lease-ttl each, for another relay of the outbox
COUNTER_ROUNDS = 5  # erase_profile calls while counters appear between read and call
RESUME_CHUNK = 20
MAX_HOPS = 16  # survivors followed by one run (as cdp.profiles.resolve)

STEPS = (
    "suppressed",
    "unindexed",
    "erased",
    "resuppressed",
    "reunindexed",
    "relayed",
    "pointers",
    "unlisted",
    "audited",
    "cleared",
    "purged",
)
# The job's fields GET /cdp/jobs/{id} shows (the OpenAPI document's Job).
PUBLIC_FIELDS = (
    "id",
    "state",
    "step",
    "canonicalId",
    "createdAt",
    "finishedAt",
    "identifiers",
    "exits",
    "purgedEvents",
    "error",
)

Result = Literal["done", "audited", "gone", "busy"]


@dataclass(slots=True)
class Job:
    """An erasure job as its hash holds it."""

    id: str
    cid: str
    at_iso: str
    by: str
    step: str = ""  # the last step done
    state: str = "erasing"
    identifiers: int = 0
    exits: int = 0
    merged_from: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, job_id: str, raw: dict[Any, Any]) -> Job:
        got = {text(k): text(v) for k, v in raw.items()}
        return cls(
            id=job_id,
            cid=got["canonicalId"],
            at_iso=got["createdAt"],
            by=got.get("by", "admin"),
            step=got.get("step", ""),
            state=got.get("state", "erasing"),
            identifiers=int(got.get("identifiers", 0)),
            exits=int(got.get("exits", 0)),
            merged_from=json.loads(got.get("mergedFrom", "[]")),
        )


async def start(
    redis: Client, scripts: Scripts, settings: Settings, job_id: str, cid: str, now_ms: int,
    runner: str, by: str = "admin",
) -> None:  # fmt: skip
    """Create job ``job_id`` erasing ``cid``, held by ``runner``, and list it as open."""
    key = keys.job(job_id)
    async with redis.pipeline(transaction=True) as pipe:  # one slot: the job's
        pipe.hset(
            key,
            mapping={
                "id": job_id,
                "state": "erasing",
                "step": "",
                "canonicalId": cid,
                "createdAt": iso_ms(now_ms),
                "by": by,
            },
        )
        pipe.expire(key, JOB_TTL_S)
        pipe.set(keys.job_lease(job_id), runner, px=settings.lease_ttl_ms)
        await pipe.execute()
    await redis.zadd(keys.ERASURES_OPEN, {job_id: now_ms})


async def run(
    redis: Client,
    scripts: Scripts,
    settings: Settings,
    job_id: str,
    runner: str,
    until: str = "purged",
) -> tuple[Result, Job | None]:
    """Run job ``job_id`` from its last step done through step ``until``, holding its
    lease as ``runner``. "busy": another runner holds it; "gone": the profile no
    longer exists (another job erased it, or the job was never started)."""
    raw = await redis.hgetall(keys.job(job_id))
    if not raw:
        await redis.zrem(keys.ERASURES_OPEN, job_id)
        return "gone", None
    job = Job.of(job_id, raw)
    steps = _Steps(redis, scripts, settings, job, runner)
    hops = 0
    renewed = -float("inf")
    while job.step != until and job.state not in ("done", "failed"):
        # The lease, taken at the first step and renewed once a third of it has passed.
        if time.monotonic() - renewed > settings.lease_ttl_ms / 3000:
            if not await scripts.lease_acquire(
                keys.job_lease(job_id), runner, settings.lease_ttl_ms
            ):
                return "busy", job
            renewed = time.monotonic()
        step = STEPS[STEPS.index(job.step) + 1] if job.step else STEPS[0]
        outcome = await getattr(steps, step)()
        if outcome == "gone":
            return "gone", job
        if outcome == "restart":  # merged away: the job erases the survivor from step 1
            hops += 1
            if hops > MAX_HOPS:
                raise ErasureStuck(f"erasure job {job_id}: merge pointers do not end")
            await redis.hset(keys.job(job_id), mapping={"canonicalId": job.cid, "step": ""})
            job.step = ""
            continue
        job.step = step
        if step == "audited":
            job.state = "purging"
        await redis.hset(keys.job(job_id), mapping={"step": step, "state": job.state})
        faults.point(f"erase:{step}")
    if job.state in ("done", "failed"):  # (again: a crash may have come before the ZREM)
        await redis.zrem(keys.ERASURES_OPEN, job_id)
        return ("done" if job.state == "done" else "gone"), job
    return "audited", job


async def abandon(redis: Client, job_id: str, reason: str) -> None:
    """End a job that has nothing to erase (its profile is gone): failed, not open."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.job(job_id), mapping={"state": "failed", "error": reason})
        pipe.delete(keys.job_identifiers(job_id), keys.job_lease(job_id))
        await pipe.execute()
    await redis.zrem(keys.ERASURES_OPEN, job_id)


async def resume_open(redis: Client, scripts: Scripts, settings: Settings, runner: str) -> int:
    """Run the open jobs nobody holds (their runner died); returns how many left the
    open index (done, or nothing left to erase)."""
    open_ids: Any = await redis.zrange(keys.ERASURES_OPEN, 0, RESUME_CHUNK - 1)
    finished = 0
    for raw_id in open_ids:
        job_id = text(raw_id)
        if not await scripts.lease_acquire(keys.job_lease(job_id), runner, settings.lease_ttl_ms):
            continue
        log.info("erasure resumed", job=job_id, runner=runner)
        result, job = await run(redis, scripts, settings, job_id, runner)
        if result == "gone" and job is not None and job.state != "failed":
            await abandon(redis, job_id, "the profile no longer exists (erased by another job)")
        finished += result in ("done", "gone")
    return finished


class _Steps:
    """One method per step of ``STEPS``; each returns None, "gone" or "restart"."""

    def __init__(
        self, redis: Client, scripts: Scripts, settings: Settings, job: Job, runner: str
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.job = job
        self.runner = runner

    async def suppressed(self) -> str | None:
        ids = await self.redis.smembers(keys.identifiers(self.job.cid))
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:  # two slots
                pipe.sadd(keys.job_identifiers(self.job.id), *ids)
                pipe.expire(keys.job_identifiers(self.job.id), JOB_TTL_S)
                pipe.sadd(keys.SUPPRESSED, *ids)
                await pipe.execute()
        return None

    async def unindexed(self) -> str | None:
        ids = sorted(text(i) for i in await self.redis.smembers(keys.job_identifiers(self.job.id)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for typed_id in ids:
                await self.scripts.identifier_release.queue(pipe, typed_id, self.job.cid)
            await pipe.execute()
        return None

    async def erased(self) -> str | None:
        job = self.job
        await self._finish_merges_into(job.cid)
        names = {text(n) for n in await self.redis.hkeys(keys.counters(job.cid))}
        for _ in range(COUNTER_ROUNDS):
            reply = await self.scripts.erase_profile(
                cid=job.cid,
                counter_names=names,
                at_iso=job.at_iso,
                job_id=job.id,
                events_maxlen=self.settings.segment_events_maxlen,
            )
            if reply.status == "COUNTERS":
                names |= set(reply.names)
                continue
            if reply.status == "FORWARDED":
                # A cross-slot merge not finished yet is finished first (its journal
                # in the loser's hash), so its state is where the job goes.
                state = await self.redis.hget(keys.profile(job.cid), "mergeState")
                if state is not None and text(state) != "done":
                    await merge.resume(self.redis, self.scripts, self.settings, job.cid, wall_ms())
                survivor = await merge.final_survivor(self.redis, reply.survivor)
                log.info("erasure follows a merge", job=job.id, loser=job.cid, survivor=survivor)
                job.cid = survivor
                return "restart"
            if reply.status == "GONE":
                return "gone"
            job.identifiers, job.exits = reply.identifiers, reply.exits
            await self.redis.hset(
                keys.job(job.id), mapping={"identifiers": job.identifiers, "exits": job.exits}
            )
            return None
        raise ErasureStuck(f"erasure of {job.cid}: counters kept appearing")

    async def _finish_merges_into(self, cid: str) -> None:
        """The cross-slot merges into ``cid`` still open (their process died, or runs
        now) are finished first: the loser's state and identifiers land in ``cid``,
        and are erased with it, rather than a journal pointing at an erased profile."""
        for raw in await self.redis.zrange(keys.MERGES_OPEN, 0, -1):
            loser = text(raw)
            into = await self.redis.hget(keys.profile(loser), "mergedInto")
            if into is not None and await merge.final_survivor(self.redis, text(into)) == cid:
                await merge.resume(self.redis, self.scripts, self.settings, loser, wall_ms())

    async def resuppressed(self) -> str | None:
        return await self.suppressed()

    async def reunindexed(self) -> str | None:
        return await self.unindexed()

    async def relayed(self) -> str | None:
        """The EXITs the erase step pushed go to cdp:segment-events through the relay of
        every outbox (cdp.segments.outbox: add-once, members change, compare-and-pop,
        its lease). A relay of the same outbox running elsewhere (the engine, the
        sweeper) holds its lease: waited for, as the outbox is deleted afterwards."""
        relay = Relay(self.redis, self.scripts, self.settings)
        for _ in range(RELAY_ATTEMPTS):
            if self.job.cid in (await relay.relay([self.job.cid])).emptied:
                return None
            await asyncio.sleep(self.settings.lease_ttl_ms / 1000 / RELAY_ATTEMPTS)
        raise ErasureStuck(f"erasure of {self.job.cid}: its outbox is being relayed elsewhere")

    async def pointers(self) -> str | None:
        job = self.job
        merged = sorted(text(c) for c in await self.redis.smembers(keys.merged(job.cid)))
        job.merged_from = sorted(set(job.merged_from) | set(merged) | {job.cid})
        await self.redis.hset(keys.job(job.id), "mergedFrom", json.dumps(job.merged_from))
        for old in merged:
            await delete_profile_keys(self.redis, old)
        return None

    async def unlisted(self) -> str | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.PROFILES, self.job.cid)
            pipe.zrem(keys.SEGMENTS_DUE, self.job.cid)
            await pipe.execute()
        return None

    async def audited(self) -> str | None:
        job = self.job
        record = {
            "action": "erase",
            "canonicalId": job.cid,
            "job": job.id,
            "by": job.by,
            "at": job.at_iso,
            "identifiers": job.identifiers,
            "exits": job.exits,
        }
        await add_once(
            self.redis, keys.AUDIT, [(f"erase:{job.id}", record)], AUDIT_MAXLEN, AUDIT_KEEP_MS
        )
        return None

    async def cleared(self) -> str | None:
        cid = self.job.cid
        await self.redis.delete(
            keys.profile(cid),
            keys.identifiers(cid),
            keys.merged(cid),
            keys.outbox(cid),
            keys.outbox_relay(cid),
        )
        return None

    async def purged(self) -> str | None:
        job = self.job
        identifiers = {text(i) for i in await self.redis.smembers(keys.job_identifiers(job.id))}

        removed = await purge_records(
            self.redis, identifiers, set(job.merged_from) | {job.cid}, self._renew
        )
        async with self.redis.pipeline(transaction=True) as pipe:  # the job's slot
            pipe.hset(
                keys.job(job.id),
                mapping={
                    "state": "done",
                    "purgedEvents": removed,
                    "finishedAt": iso_ms(wall_ms()),
                },
            )
            pipe.delete(keys.job_identifiers(job.id), keys.job_lease(job.id))
            await pipe.execute()
        job.state = "done"
        await self.redis.zrem(keys.ERASURES_OPEN, job.id)
        return None

    async def _renew(self) -> None:
        """Between chunks of a long purge: the lease again (lost: another runner goes on,
        both purges are harmless)."""
        await self.scripts.lease_acquire(
            keys.job_lease(self.job.id), self.runner, self.settings.lease_ttl_ms
        )


async def delete_profile_keys(redis: Client, cid: str) -> None:
    """Every key of profile ``cid`` (one slot, one DEL): a merged-away id's pointer and
    whatever a merge interrupted left of it."""
    names = [text(n) for n in await redis.hkeys(keys.counters(cid))]
    await redis.delete(*keys.profile_keys(cid, names))


async def purge_records(
    redis: Client,
    identifiers: set[str],
    cids: set[str],
    renew: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Delete the erased person's events (dropped, dead), merge records and refused
    requests (``cdp:rejections``); how many."""
    needles = _needles(identifiers)
    removed = 0
    for stream in (keys.DROPPED, keys.DEAD, keys.MERGES, keys.REJECTIONS):
        cursor = "-"
        while True:
            entries: Any = await redis.xrange(stream, cursor, "+", count=PURGE_CHUNK)
            if not entries:
                break
            if stream == keys.REJECTIONS:
                doomed = [eid for eid, fields in entries if _quotes(fields, needles)]
            else:
                doomed = [eid for eid, fields in entries if _names(fields, identifiers, cids)]
            if doomed:
                removed += await redis.xdel(stream, *doomed)
            if renew is not None:
                await renew()
            if len(entries) < PURGE_CHUNK:
                break
            cursor = "(" + text(entries[-1][0])
    return removed


def _needles(identifiers: set[str]) -> set[str]:
    """What a refused request's body holds when it names one of ``identifiers``: each
    one's value (without its ``user:``/``email:``/``anon:`` type), lower-cased (an
    email is stored lower-cased, its body as sent), raw and as JSON escapes it."""
    out = set()
    for identifier in identifiers:
        value = identifier.partition(":")[2].lower()
        if value:
            out |= {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return out


def _quotes(fields: dict[bytes, bytes], needles: set[str]) -> bool:
    """Does a refused request's body (text, maybe cut) hold any of ``needles``? A short
    value may match a body about someone else: that record goes too (the safe side)."""
    body = text(fields.get(b"body", b"")).lower()
    return any(needle in body for needle in needles)


def _names(fields: dict[bytes, bytes], identifiers: set[str], cids: set[str]) -> bool:
    """Does a dropped/dead event, or a merge record, concern the erased person?"""
    if b"status" in fields:  # a record of cdp:merges
        named = {text(fields[f]) for f in (b"profile", b"survivor", b"merged") if f in fields}
        return bool(named & cids) or text(fields.get(b"identifier", b"")) in identifiers
    try:
        event = json.loads(fields.get(b"e") or b"{}")
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    user, anon, email = (
        v if isinstance(v, str) else None
        for v in (event.get("userId"), event.get("anonymousId"), event.get("email"))
    )
    return bool(set(typed_identifiers(user, anon, email)) & identifiers)
