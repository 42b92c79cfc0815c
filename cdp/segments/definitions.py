"""Segment definitions: the three built-ins (from settings) and custom ones (in Redis).

A definition is ``{"rule": <rule>, "description": "..."}`` (cdp.segments.rules). Custom
definitions live in the hash ``cdp:segments`` (name -> JSON) and every change bumps
``cdp:segments:version`` so that workers reload them (and so that a transition
evaluated with older definitions is refused). Deleting one ends its memberships
without events (``delete_definition``). Built-ins cannot be replaced or deleted over
the API: their thresholds are settings.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from cdp import keys
from cdp.connect import Client, is_cluster
from cdp.scripts import Scripts
from cdp.segments.outbox import Relay, uses_outbox
from cdp.segments.rules import Check, Reads, Rule, RuleError, compile_rule, parse_rule, rule_reads
from cdp.settings import Settings, format_duration
from cdp.streams import text

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FORGET_CHUNK = 500  # memberships a deleted segment ends per script call


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    rule: Rule
    source: dict[str, Any]  # the JSON rule as written
    description: str = ""
    builtin: bool = False
    # ``rule`` compiled once (cdp.segments.rules.compile_rule): what the engine runs.
    check: Check = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check", compile_rule(self.rule))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rule": self.source,
            "description": self.description,
            "builtin": self.builtin,
        }


def builtins(settings: Settings) -> dict[str, Segment]:
    inactivity = format_duration(settings.reengage_inactivity_threshold_ms)
    sources: dict[str, tuple[dict[str, Any], str]] = {
        "power_user": (
            {
                "count": {
                    "within": format_duration(settings.power_user_window_ms),
                    "gte": settings.power_user_threshold,
                }
            },
            "At least power-user-threshold TRACK events within power-user-window.",
        ),
        "pro_plan": ({"trait": "plan", "op": "eq", "value": "pro"}, 'Trait plan is "pro".'),
        "reengage": (
            {
                "all": [
                    {
                        "returned": {
                            "after": inactivity,
                            "within": format_duration(settings.reengage_duration_ms),
                        }
                    },
                    {"not": {"inactive": inactivity}},
                ]
            },
            "Returned after reengage-inactivity-threshold of inactivity; leaves when inactive "
            "again for the threshold or reengage-duration after the return.",
        ),
    }
    return {
        name: Segment(name, parse_rule(rule), rule, description, builtin=True)
        for name, (rule, description) in sources.items()
    }


def parse_definition(name: str, body: Any) -> Segment:
    """A PUT body -> Segment; RuleError (with the JSON path) when it is not valid."""
    if not NAME.fullmatch(name):
        raise RuleError(f"name {name!r}: use 1 to 64 letters, digits, '_', '-' or '.'", path="name")
    if not isinstance(body, dict) or "rule" not in body:
        raise RuleError('$: expected {"rule": {...}, "description": "..."}')
    unknown = set(body) - {"rule", "description"}
    if unknown:
        raise RuleError(f"$: unknown fields {sorted(unknown)}")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise RuleError("$.description: expected a string")
    return Segment(name, parse_rule(body["rule"], "$.rule"), body["rule"], description)


async def load_segments(redis: Client, settings: Settings) -> dict[str, Segment]:
    segments = builtins(settings)
    for raw_name, raw in (await redis.hgetall(keys.SEGMENTS)).items():
        name = text(raw_name)
        try:
            segments[name] = parse_definition(name, json.loads(raw))
        except (RuleError, ValueError):
            continue  # written by a newer version; skipped rather than crashing workers
    return segments


def reads_of(segments: dict[str, Segment]) -> Reads:
    """What evaluating every segment of ``segments`` reads of a profile."""
    reads = Reads()
    for segment in segments.values():
        reads |= rule_reads(segment.rule)
    return reads


class SegmentCache:
    """A worker's copy of the definitions, reloaded when the version changes, and what
    they read of a profile (``reads``: the projection ``profile_view`` is called with)."""

    def __init__(self, redis: Client, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._version: Any = b"-"
        self.segments: dict[str, Segment] = {}
        self.reads = Reads()

    async def refresh(self) -> dict[str, Segment]:
        version = await self._redis.get(keys.SEGMENTS_VERSION)
        if version != self._version:
            self.segments = await load_segments(self._redis, self._settings)
            self.reads = reads_of(self.segments)
            self._version = version
        return self.segments

    @property
    def version(self) -> str:
        """``cdp:segments:version`` as read before the definitions held ("" if none):
        ``segment_transition`` refuses an evaluation made with older definitions."""
        return "" if self._version in (None, b"-") else text(self._version)


async def store_definition(redis: Client, segment: Segment) -> None:
    """Store (create or replace) custom ``segment``, then bump ``cdp:segments:version``.

    Two ordered writes (the keys are different slots on a cluster): the bump comes
    after the definition, so a worker that reloads on the new version reads it. A crash
    between the two leaves the definition stored but not announced: the PUT was not
    answered 2xx, and its retry (or any later change of a definition) bumps the version.
    """
    body = json.dumps({"rule": segment.source, "description": segment.description})
    await redis.hset(keys.SEGMENTS, segment.name, body)
    await redis.incr(keys.SEGMENTS_VERSION)


async def delete_definition(redis: Client, name: str, settings: Settings | None = None) -> bool:
    """Delete custom segment ``name`` and end its memberships without events; False if
    there was no such segment (neither its definition nor anything left of it).

    The definition goes first, with a bump of ``cdp:segments:version`` (``_withdraw``),
    so that no evaluation made with it is accepted any more (``segment_transition``
    refuses older definitions; with the outbox packing the engine reads the version
    again after its writes and evaluates again); then its backfill state goes, and
    ``segment_forget`` ends the memberships chunk by chunk (read from the members
    zset), keeping every transition count: one call per chunk on one Redis, each
    atomically; on a cluster (outbox packing) one call per profile, whose members-zset
    change goes through its outbox behind its own entries, relayed at once. Each step
    is safe to run again: a crash midway leaves members or a backfill behind the deleted
    definition, which a DELETE again finds and removes.
    """
    settings = settings or Settings()
    removed = await _withdraw(redis, name)
    if not removed:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.segment_members(name))
            pipe.exists(keys.segment_backfill(name))
            pipe.sismember(keys.BACKFILLS, name)
            if not any(await pipe.execute()):
                return False
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(keys.segment_backfill(name))
        pipe.srem(keys.BACKFILLS, name)
        await pipe.execute()
    if uses_outbox(redis, settings):
        await _forget_through_outboxes(redis, name, settings)
        return True
    forget = Scripts(redis).segment_forget
    while chunk := [
        text(c) for c in await redis.zrange(keys.segment_members(name), 0, FORGET_CHUNK - 1)
    ]:
        if not await forget(name, chunk):
            break  # defined again: its memberships carry over
    return True


async def _forget_through_outboxes(redis: Client, name: str, settings: Settings) -> None:
    """The memberships of ``name`` ended one profile per call, each members-zset change
    relayed from the profile's outbox; until the zset is empty or the segment is
    defined again. A profile whose outbox another relay holds is left to it (that relay
    relays the change too, it relays until the outbox is empty): the loop waits for it
    a few leases at most, then leaves it."""
    scripts = Scripts(redis)
    relay = Relay(redis, scripts, settings)
    members = keys.segment_members(name)
    deadline = time.monotonic() + 10 * settings.lease_ttl_ms / 1000
    forgotten: set[str] = set()
    while chunk := [text(c) for c in await redis.zrange(members, 0, FORGET_CHUNK - 1)]:
        if await redis.hexists(keys.SEGMENTS, name):
            return  # defined again: its memberships carry over
        if fresh := [cid for cid in chunk if cid not in forgotten]:
            async with redis.pipeline(transaction=False) as pipe:
                for cid in fresh:
                    await scripts.segment_forget.queue(pipe, name, [cid], outbox=True)
                await pipe.execute()
            forgotten.update(fresh)
        relayed = await relay.relay(chunk)
        if len(relayed.emptied) < len(chunk):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)  # another relay holds some: it relays them


async def _withdraw(redis: Client, name: str) -> int:
    """HDEL the definition and bump the version; 1 if it was there.

    One transaction on one Redis, so an evaluation made with the definition is refused
    from the instant it is gone. On a cluster the two keys are different slots: two
    ordered writes; the transitions cannot read the version there (another slot), so
    the engine reads it again after its writes (``cdp.segments.transitions``): an
    evaluation loaded before the deletion and written before that read may still
    record one event of the deleted segment, whose membership the engine's evaluation
    again (or the forget step) then ends silently.
    """
    if is_cluster(redis):
        removed = int(await redis.hdel(keys.SEGMENTS, name))
        await redis.incr(keys.SEGMENTS_VERSION)
        return removed
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.SEGMENTS, name)
        pipe.incr(keys.SEGMENTS_VERSION)
        withdrawn, _ = await pipe.execute()
    return int(withdrawn)
