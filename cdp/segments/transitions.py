"""Writing a chunk's evaluations: ``segment_transition`` calls, the due index, the relay.

The segment engine (``cdp.segments.engine``) decides; ``TransitionWriter`` writes.
Two packings (``cdp.segments.outbox.uses_outbox``: apply-protocol, else is it a
cluster), every key of each script declared:

- direct (one Redis, apply-protocol batch): one ``profile_view`` and one
  ``segment_transition`` call per chunk; the transition appends the events to
  ``cdp:segment-events``, writes the members zsets and the due index and compares the
  definitions version, all in the call;
- outbox (a Redis Cluster, or apply-protocol profile): on a cluster one call per
  profile (its slot), pipelined; the transition pushes each event with its
  members-zset change to the profile's outbox, and the writer relays the outboxes it
  wrote or found non-empty right after (``cdp.segments.outbox.Relay``). What is in
  other slots is the writer's: the due index is written after the call (and kept at
  now + lease-ttl, a guard written before the call, until the relay has emptied the
  profile's outbox: whatever dies in between, the sweeper evaluates the profile
  within lease-ttl, and that evaluation relays it); the definitions version is read
  again after the writes, and a change makes the profiles written evaluated again with
  the new definitions (the deletion protocol cannot guarantee it: a worker may hold
  definitions loaded before a deletion for as long as its tick lasts; so a deleted
  segment's membership taken in that window is ended silently by the new evaluation,
  after one event of it may have been recorded). The due write after the call is not
  atomic with the profile: an apply's due mark landing between the read and that
  write may be overwritten; the applying worker evaluates the profile right after its
  tick anyway (docs/cluster.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cdp import keys
from cdp.connect import Client
from cdp.scripts import Scripts, TransitionRequest
from cdp.segments.outbox import Relay
from cdp.settings import Settings
from cdp.streams import text


@dataclass(slots=True)
class Outcome:
    """What a chunk's writes did: eventIds recorded, profiles to evaluate again."""

    emitted: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


class TransitionWriter:
    def __init__(
        self, redis: Client, scripts: Scripts, settings: Settings, relay: Relay, *, cluster: bool
    ) -> None:
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.relay = relay
        self.cluster = cluster  # one profile per call

    async def direct(
        self, writes: list[TransitionRequest], gone: list[str], definitions_version: str
    ) -> Outcome:
        """One Redis: one round trip, one transition call for the whole chunk (events,
        members, the due index and the version check inside)."""
        if not gone and not writes:
            return Outcome()
        async with self.redis.pipeline(transaction=False) as pipe:
            if gone:
                pipe.zrem(keys.SEGMENTS_DUE, *gone)
            if writes:
                await self.scripts.segment_transition.queue(
                    pipe,
                    writes,
                    events_maxlen=self.settings.segment_events_maxlen,
                    definitions_version=definitions_version,
                )
            replies = await pipe.execute()
        outcome = Outcome()
        if writes:
            answers = self.scripts.segment_transition.decode(replies[-1])
            for write, answer in zip(writes, answers, strict=True):
                if answer.status == "STALE":
                    outcome.stale.append(write.cid)
                outcome.emitted += answer.event_ids
        return outcome

    async def outbox(
        self,
        writes: list[TransitionRequest],
        gone: list[str],
        unrelayed: set[str],
        definitions_version: str,
        now_ms: int,
    ) -> Outcome:
        """The outbox packing (a cluster: one transition call per profile, pipelined).

        1. The transitions, and a guard in the due index (ZADD LT now + lease-ttl) for
           each profile whose call may push to its outbox: whatever dies after, the
           sweeper evaluates it within lease-ttl, and that evaluation relays it.
        2. The relay of every outbox written or found non-empty.
        3. The definitions version read again, and the due times the evaluations want
           (the guard stays on a profile whose outbox another relay still holds).
        A version that changed since the definitions were loaded makes the profiles
        written evaluated again with the new ones (``evaluate``'s retry): a deleted
        segment's membership taken in that window ends silently as a dropped one (an
        event of the deleted segment may have been recorded in the window, as one Redis
        records it for an evaluation written just before the deletion).
        """
        outcome = Outcome()
        if not writes and not gone and not unrelayed:
            return outcome
        guard = now_ms + self.settings.lease_ttl_ms
        pushing = [w.cid for w in writes if w.wanted or w.dropped]
        calls = [[w] for w in writes] if self.cluster else ([writes] if writes else [])
        transition = self.scripts.segment_transition
        async with self.redis.pipeline(transaction=False) as pipe:
            if pushing:
                pipe.zadd(keys.SEGMENTS_DUE, dict.fromkeys(pushing, guard), lt=True)
            for call in calls:
                await transition.queue(
                    pipe,
                    call,
                    events_maxlen=self.settings.segment_events_maxlen,
                    definitions_version=definitions_version,
                    outbox=True,
                )
            replies = await pipe.execute()
        answers = [
            a for reply in replies[len(replies) - len(calls) :] for a in transition.decode(reply)
        ]
        accepted: list[TransitionRequest] = []
        for write, answer in zip(writes, answers, strict=True):
            if answer.status == "STALE":
                outcome.stale.append(write.cid)
            elif answer.status == "GONE":
                gone.append(write.cid)
            else:
                accepted.append(write)
                outcome.emitted += answer.event_ids
                if write.wanted or write.dropped:
                    unrelayed.add(write.cid)
        relayed = await self.relay.relay(unrelayed) if unrelayed else None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.SEGMENTS_VERSION)
            if gone:
                pipe.zrem(keys.SEGMENTS_DUE, *gone)
            for write in accepted:
                if write.cid in unrelayed and (relayed is None or write.cid not in relayed.emptied):
                    continue  # left due at the guard: the sweeper relays it
                if write.due_ms is None:
                    pipe.zrem(keys.SEGMENTS_DUE, write.cid)
                else:
                    pipe.zadd(keys.SEGMENTS_DUE, {write.cid: write.due_ms})
            version, *_ = await pipe.execute()
        if (text(version) if version is not None else "") != definitions_version:
            outcome.stale += [w.cid for w in accepted]
        return outcome
