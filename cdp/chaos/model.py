"""The reference model: DESIGN.md's semantics in plain Python, no Redis.

``Model(settings).apply(events)`` takes ``StreamEvent``s in any order and returns the
profiles the system must end with. It applies them one by one in (ts, eventId) order,
with the same rules as ``lua/apply_batch-n.lua`` and ``lua/includes/identity.lua``, but
written for reading, not speed: dedup by eventId, identity resolution with merges into
the oldest profile and the guard rails, LWW traits with tombstones, first/lastSeen,
bucketed counters.

``canonical(...)`` turns profiles (the model's, or ``snapshot(redis)``'s) into a form
that does not depend on which canonical ids were issued, so the two compare with ``==``.

It is an oracle, never part of the pipeline: the property tests and the fault suite's
checker (``cdp.chaos.checker``) compare what Redis holds with it. It lives in the
package, not in ``tests/``, so that ``cdp chaos`` can use it where no tests are installed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cdp import keys
from cdp.connect import SyncClient
from cdp.events import StreamEvent, iso_ms
from cdp.pipeline.apply import bucket_member
from cdp.redis_nodes import scan_all_sync
from cdp.settings import Settings
from cdp.streams import text

Cell = tuple[str, str, Any]  # (ts, eventId, value); value None is a tombstone


@dataclass
class Profile:
    seq: int
    identifiers: set[str] = field(default_factory=set)
    traits: dict[str, Cell] = field(default_factory=dict)
    first_seen: str | None = None
    last_seen: str | None = None
    counters: dict[str, Counter[str]] = field(default_factory=dict)
    merges: int = 0

    @property
    def user(self) -> str | None:
        users = sorted(i for i in self.identifiers if i.startswith("user:"))
        return users[0] if users else None

    def count(self, kind: str) -> int:
        return sum(1 for i in self.identifiers if i.startswith(kind + ":"))

    def see(self, first: str | None, last: str | None) -> None:
        if first is not None and (self.first_seen is None or first < self.first_seen):
            self.first_seen = first
        if last is not None and (self.last_seen is None or last > self.last_seen):
            self.last_seen = last

    def write_trait(self, name: str, cell: Cell) -> None:
        current = self.traits.get(name)
        if current is None or cell[:2] > current[:2]:
            self.traits[name] = cell


class Model:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profiles: dict[int, Profile] = {}
        self.owner: dict[str, int] = {}
        self.seen: set[str] = set()
        self.refusals: list[tuple[str, str]] = []  # (eventId, reason)
        self.issued = 0

    def apply(self, events: list[StreamEvent]) -> Model:
        for event in sorted(events, key=lambda e: (e.ts, e.eventId)):
            self.apply_one(event)
        return self

    def apply_one(self, event: StreamEvent) -> None:
        if event.eventId in self.seen:
            return
        self.seen.add(event.eventId)
        ids = event.identifiers(self.settings.blocked_values)
        if not ids:
            return
        profile = self.resolve(event.eventId, ids)
        ts = iso_ms(event.ts)
        for name, value in (event.traits or {}).items():
            profile.write_trait(name, (ts, event.eventId, value))
        profile.see(ts, ts)
        bucket = bucket_member(event.ts, self.settings.counter_bucket_ms)
        names = [keys.SEEN]
        if event.type == "TRACK" and event.name:
            names += [event.name, keys.ALL_TRACK]
        for name in names:
            profile.counters.setdefault(name, Counter())[bucket] += 1

    def resolve(self, event_id: str, ids: list[str]) -> Profile:
        owners, anon_only, free = self._owners(ids)
        group, user_owner = self._mergeable(event_id, ids, owners, anon_only)
        survivor = self._merge_group(event_id, group, user_owner)
        self._link(event_id, survivor, free)
        return survivor

    def _owners(self, ids: list[str]) -> tuple[list[int], dict[int, bool], list[str]]:
        """The profiles owning some of ``ids`` (in order), whether each is named only by
        anonymousIds, and the identifiers nobody owns yet."""
        owners: list[int] = []
        anon_only: dict[int, bool] = {}
        free = []
        for identifier in ids:
            seq = self.owner.get(identifier)
            if seq is None:
                free.append(identifier)
            elif seq not in anon_only:
                owners.append(seq)
                anon_only[seq] = identifier.startswith("anon:")
            elif not identifier.startswith("anon:"):
                anon_only[seq] = False
        return owners, anon_only, free

    def _mergeable(
        self, event_id: str, ids: list[str], owners: list[int], anon_only: dict[int, bool]
    ) -> tuple[list[int], int | None]:
        """The owners the guard rails let merge (refusals recorded), and the owner of the
        event's userId."""
        s = self.settings
        group_user = ids[0] if ids[0].startswith("user:") else None
        user_owner = self.owner.get(ids[0]) if group_user else None
        group_users = 1 if group_user and user_owner is None else 0
        group: list[int] = []
        for seq in owners:
            p = self.profiles[seq]
            reason = None
            if p.user and group_user and p.user != group_user:
                if not s.merge_different_users:
                    reason = "different userIds"
                elif group_users + p.count("user") > s.max_user_ids:
                    reason = "userId limit"
            elif anon_only[seq] and group and p.count("anon") > s.max_anonymous_ids:
                reason = "anonymousId limit"
            if reason:
                self.refusals.append((event_id, reason))
                continue
            group.append(seq)
            if p.user:
                group_user = group_user or p.user
                group_users += p.count("user")
        return group, user_owner

    def _merge_group(self, event_id: str, group: list[int], user_owner: int | None) -> Profile:
        """Merge ``group`` into its oldest (a new profile if empty); the profile the event
        applies to."""
        if not group:
            self.issued += 1
            self.profiles[self.issued] = Profile(self.issued)
            group = [self.issued]
        group.sort()
        survivor = target = self.profiles[group[0]]
        for seq in group[1:]:
            if survivor.merges < self.settings.max_merges:
                self.merge(self.profiles.pop(seq), survivor)
            else:
                self.refusals.append((event_id, "merge limit"))
                if seq == user_owner:  # the event still applies to its userId's profile
                    target = self.profiles[seq]
        return target

    def _link(self, event_id: str, survivor: Profile, free: list[str]) -> None:
        s = self.settings
        for identifier in free:
            kind = identifier.split(":", 1)[0]
            if kind == "user" and survivor.count("user") >= s.max_user_ids:
                self.refusals.append((event_id, "userId limit"))
            elif kind == "email" and survivor.count("email") >= s.max_emails:
                self.refusals.append((event_id, "email limit"))
            else:
                survivor.identifiers.add(identifier)
                self.owner[identifier] = survivor.seq

    def merge(self, loser: Profile, survivor: Profile) -> None:
        for name, cell in loser.traits.items():
            survivor.write_trait(name, cell)
        for identifier in loser.identifiers:
            self.owner[identifier] = survivor.seq
        survivor.identifiers |= loser.identifiers
        for name, buckets in loser.counters.items():
            survivor.counters.setdefault(name, Counter()).update(buckets)
        survivor.see(loser.first_seen, loser.last_seen)
        survivor.merges += loser.merges + 1


def canonical(profiles: list[Profile]) -> dict[frozenset[str], dict[str, Any]]:
    """Profiles keyed by their identifier sets: equal whatever ids were issued."""
    return {
        frozenset(p.identifiers): {
            "traits": {
                k: (ts, eid, json.dumps(v, sort_keys=True)) for k, (ts, eid, v) in p.traits.items()
            },
            "firstSeen": p.first_seen,
            "lastSeen": p.last_seen,
            "counters": {n: dict(+c) for n, c in p.counters.items() if +c},
        }
        for p in profiles
    }


def snapshot(client: SyncClient) -> list[Profile]:
    """Every live profile in Redis (one Redis, or every master of a cluster), read back
    into the model's shape."""
    out = []
    for raw_key in scan_all_sync(client, keys.PROFILE_PREFIX + "{*}"):
        key = text(raw_key)
        meta = _str_dict(client.hgetall(key))
        if "mergedInto" in meta or "createdAt" not in meta:
            continue
        cid = key[len(keys.PROFILE_PREFIX) + 1 : -1]
        p = Profile(int(cid[1:]), merges=int(meta.get("merges", 0)))
        p.identifiers = {text(i) for i in client.smembers(keys.identifiers(cid))}
        for name, raw in _str_dict(client.hgetall(keys.traits(cid))).items():
            cell = json.loads(raw)
            p.traits[name] = (cell["ts"], cell["eventId"], cell["v"])
        p.first_seen, p.last_seen = meta.get("firstSeen"), meta.get("lastSeen")
        for raw_name in client.hkeys(keys.counters(cid)):
            name = text(raw_name)
            rows: Any = client.zrange(keys.counter(cid, name), 0, -1, withscores=True)
            p.counters[name] = Counter({text(m): int(score) for m, score in rows})
        out.append(p)
    return out


def _str_dict(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}
