"""The outbox relay: segment events from the profiles' outboxes to their stream, once.

On a Redis Cluster (or with apply-protocol profile) a script in a profile's slot cannot
write ``cdp:segment-events`` or a segment's members zset: it pushes each transition to
the profile's outbox (``cdp:profile:{cid}:outbox``, lua/includes/outbox.lua), atomically
with the membership change. ``relay(cids)`` moves those entries on, per profile in
order, in four round trips for any number of profiles:

1. take the profile's relay lease (``cdp:profile:{cid}:outbox:relay``, lease-ttl: one
   relay per outbox at a time, so a members-zset change is never applied after a later
   one of the same profile) and LRANGE the head of its outbox;
2. ``outbox_add`` in the stream's slot: XADD each entry whose id is not marked in
   ``{cdp:segment-events}:recorded``, and mark it (marks kept dedup-ttl);
3. the members-zset change of each entry (ZADD/ZREM, in outbox order per profile);
4. ``outbox_pop`` in the profile's slot: LPOP each entry relayed while it is the head
   (compare-and-pop), and give the lease back once the outbox is empty.

A crash at any point leaves the entries in the outbox: relayed again, the XADD is
skipped (marked), the members change is made again (the same one: nothing later of that
profile was applied, the lease says so), the pop is done. So every entry reaches the
stream exactly once, in order per profile. ``faults.point("outbox:added")`` sits between
2 and 3, for the kill tests.

Who relays: the segment engine, right after an evaluation, the profiles whose outbox it
found non-empty or wrote to (the worker after each tick, the sweeper for due profiles,
the backfill). Leftovers (a relay that died, a lease held by a dead process) are found
through the due index: the engine keeps such a profile due within lease-ttl
(``cdp.segments.engine``), so the sweeper evaluates it again, which relays it; the
entries of other scripts (a merge's EXITs in the survivor's outbox) come with a due
mark of the profile they are pushed to. ``relay_all`` (SCAN every master) is the
backstop for an outbox no due mark names (tests, and ``cdp`` tooling).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdp import faults, keys
from cdp.clock import wall_ms
from cdp.connect import Client, uses_profile_protocol
from cdp.redis_nodes import scan_all
from cdp.scripts import Scripts
from cdp.settings import Settings
from cdp.streams import text

RELAY_BATCH = 100  # entries read per outbox per round
MAX_ROUNDS = 20  # rounds of one relay call (an outbox still growing is left to the next)
OUTBOX_PATTERN = f"{keys.PROFILE_PREFIX}*:outbox"


class Member(msgspec.Struct, frozen=True):
    """The members-zset change an entry carries."""

    segment: str
    cid: str
    op: str  # "add" | "rem"
    score: float = 0


class Entry(msgspec.Struct, frozen=True):
    """An outbox entry (lua/includes/outbox.lua); ``stream`` "" carries only a members
    change (a dropped or forgotten membership)."""

    id: str
    stream: str
    maxlen: float = 0  # a number however the script's cjson wrote it
    fields: list[str] | dict[str, str] = msgspec.field(default_factory=list)
    member: Member | None = None


_decode_entry = msgspec.json.Decoder(Entry).decode


@dataclass(slots=True)
class Relayed:
    """What a relay did: entries appended to their stream (not marked before), and the
    profiles whose outbox it left empty."""

    added: int = 0
    emptied: set[str] = field(default_factory=set)


def uses_outbox(redis: Client, settings: Settings) -> bool:
    """Segment events through the profiles' outboxes? With apply-protocol profile (and on
    a cluster, where nothing else works); direct with batch on one Redis."""
    return uses_profile_protocol(redis, settings)


class Relay:
    def __init__(self, redis: Client, scripts: Scripts, settings: Settings) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings

    async def relay(self, cids: Iterable[str]) -> Relayed:
        """Relay the outboxes of ``cids`` whose lease this call gets (its own name on the
        leases: two calls of one process are two relays)."""
        owner = secrets.token_hex(8)
        done = Relayed()
        pending = sorted(set(cids))
        for _ in range(MAX_ROUNDS):
            if not pending:
                break
            heads = await self._take(pending, owner)
            held = {cid: raw for cid, raw in heads.items() if raw}
            done.emptied |= {cid for cid, raw in heads.items() if not raw}
            if not held:
                break
            entries = [_decode_entry(raw) for raws in held.values() for raw in raws]
            done.added += await self._add(entries)
            faults.point("outbox:added")
            await self._members(entries)
            left = await self._pop(held, owner)
            done.emptied |= {cid for cid, n in left.items() if n == 0}
            pending = sorted(cid for cid, n in left.items() if n > 0)
        return done

    async def _take(self, cids: Sequence[str], owner: str) -> dict[str, list[bytes]]:
        """The lease and head of each outbox; the cids whose lease another relay holds
        are left out. An empty outbox's lease is given back at once."""
        ttl = self.settings.lease_ttl_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                await self.scripts.lease_acquire.queue(pipe, keys.outbox_relay(cid), owner, ttl)
                pipe.lrange(keys.outbox(cid), 0, RELAY_BATCH - 1)
            replies = await pipe.execute()
        heads: dict[str, list[bytes]] = {}
        for i, cid in enumerate(cids):
            if self.scripts.lease_acquire.decode(replies[2 * i]):
                heads[cid] = list(replies[2 * i + 1])
        empty = [cid for cid, raw in heads.items() if not raw]
        if empty:
            async with self.redis.pipeline(transaction=False) as pipe:
                for cid in empty:
                    await self.scripts.lease_release.queue(pipe, keys.outbox_relay(cid), owner)
                await pipe.execute()
        return heads

    async def _add(self, entries: list[Entry]) -> int:
        """Step 2: one ``outbox_add`` per stream, every entry in outbox order (per
        profile)."""
        per_stream: dict[str, list[tuple[str, Sequence[Any]]]] = defaultdict(list)
        maxlen: dict[str, int] = {}
        for entry in entries:
            if entry.stream and isinstance(entry.fields, list):
                per_stream[entry.stream].append((entry.id, entry.fields))
                maxlen[entry.stream] = max(maxlen.get(entry.stream, 0), int(entry.maxlen))
        if not per_stream:
            return 0
        now = wall_ms()
        keep = self.settings.dedup_ttl_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, added in per_stream.items():
                await self.scripts.outbox_add.queue(
                    pipe,
                    stream=stream,
                    entries=added,
                    maxlen=maxlen[stream],
                    now_ms=now,
                    keep_ms=keep,
                )
            replies = await pipe.execute()
        return sum(sum(self.scripts.outbox_add.decode(reply)) for reply in replies)

    async def _members(self, entries: list[Entry]) -> None:
        """Step 3: each entry's members-zset change, in outbox order per profile."""
        changes = [entry.member for entry in entries if entry.member is not None]
        if not changes:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in changes:
                members = keys.segment_members(member.segment)
                if member.op == "add":
                    pipe.zadd(members, {member.cid: member.score})
                else:
                    pipe.zrem(members, member.cid)
            await pipe.execute()

    async def _pop(self, held: dict[str, list[bytes]], owner: str) -> dict[str, int]:
        """Step 4: compare-and-pop; the length of each outbox after."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid, raw_entries in held.items():
                await self.scripts.outbox_pop.queue(pipe, cid, owner, raw_entries)
            replies = await pipe.execute()
        return {
            cid: self.scripts.outbox_pop.decode(r) for cid, r in zip(held, replies, strict=True)
        }


async def relay_all(redis: Client, scripts: Scripts, settings: Settings) -> Relayed:
    """Relay every non-empty outbox: SCAN every master for them (the backstop)."""
    cids = [
        text(key).removeprefix(keys.PROFILE_PREFIX + "{").removesuffix("}:outbox")
        async for key in scan_all(redis, OUTBOX_PATTERN)
    ]
    return await Relay(redis, scripts, settings).relay(cids)
