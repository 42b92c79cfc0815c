"""The cross-slot merge: loser L folded into survivor S as a journal of idempotent steps.

On a cluster L's and S's keys are in different slots, so the merge inside
``apply_batch`` (``lua/includes/identity.lua``) cannot run there. ``merge`` does the
same folding (``lua/includes/merge.lua``) as ordered steps, each one script in one
slot, each safe to run again; the journal lives in L's profile hash (``mergedInto``,
``mergeState``, ``mergeEventId``, ``mergedAt``) with an index of the unfinished ones,
``cdp:merges:open`` (loser -> ms started):

0. intent: ZADD ``cdp:merges:open`` (a journal never frozen is dropped by ``resume``);
1. ``merge_freeze`` (L's slot): mergedInto=S, mergeState=frozen; answers L's whole
   state. From here every apply to L answers FORWARDED;
2. ``merge_absorb`` (S's slot; S marked due first): S folds L's state in, once (S's
   merged set holding L); L's memberships end with EXITs in S's outbox. S merged away
   meanwhile: the journal follows it (``merge_retarget``, only while frozen). The guard
   rails refuse it: L is unfrozen (``merge_unfreeze``), the refusal recorded. Then
   mergeState=absorbed (``merge_advance``);
3. ``identifier_repoint`` per identifier of L (each its own slot): names the final
   survivor if it names L or a profile on the way; then mergeState=repointed;
4. ``merge_finish`` (L's slot): L's keys deleted but the forward pointer
   (mergeState=done); L leaves ``cdp:profiles`` and ``cdp:segments:due``;
5. the record in ``cdp:merges`` (``cdp.streams.add_once``, once), then ZREM the index.

A process killed at any step leaves the journal: ``resume(L)`` (an apply that meets L
FORWARDED while its mergeState is not done) or ``resume_open`` (the sweeper, for
journals older than lease-ttl) finishes it from its state. ``faults.point`` after each
step lets the tests kill a real process there (``merge:intent``, ``merge:frozen``,
``merge:absorbed``, ``merge:repointed``, ``merge:finished``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdp import faults, keys
from cdp.connect import Client
from cdp.events import iso_ms
from cdp.pipeline.apply import script_limits
from cdp.scripts import Frozen, Scripts
from cdp.settings import Settings
from cdp.streams import add_once, text

MAX_HOPS = 32  # forward pointers followed from a survivor before giving up
RECORDS_MAXLEN = 100_000  # cdp:merges, as apply_batch trims it
RECORD_KEEP_MS = 86_400_000  # how long a merge's record is known written (add_once)


class MergeError(RuntimeError):
    """A merge's journal does not settle (pointers that do not end): a bug or a cycle."""


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    status: Literal["merged", "refused", "gone"]
    survivor: str  # where the loser's state is now (the survivor, or its own survivor)
    reason: str = ""  # refused: "different userIds" | "userId limit" | "merge limit"


@dataclass(frozen=True, slots=True)
class _Merge:
    """What every step of one merge shares."""

    redis: Client
    scripts: Scripts
    settings: Settings
    loser: str
    now_ms: int
    event_id: str  # the journal's mergeEventId and mergedAt (records)
    merged_at: str


async def merge(
    redis: Client,
    scripts: Scripts,
    settings: Settings,
    loser: str,
    survivor: str,
    event_id: str,
    ts_iso: str,
    now_ms: int,
) -> MergeOutcome:
    """Merge profile ``loser`` into ``survivor`` (the older), for event ``event_id`` at
    ``ts_iso``. The caller has read the guard rails; they are checked again by the absorb.

    ``loser`` already merged (or being merged) into another profile: that merge is
    finished and the answer is "merged" with the survivor where the loser's state is
    now; when it is not ``survivor``, the caller decides what to merge next.
    """
    if loser == survivor:
        raise ValueError(f"a profile cannot be merged into itself: {loser!r}")
    await redis.zadd(keys.MERGES_OPEN, {loser: now_ms}, nx=True)
    faults.point("merge:intent")
    m = _Merge(redis, scripts, settings, loser, now_ms, event_id, ts_iso)
    return await _drive(m, survivor, fresh=True)


async def resume(
    redis: Client, scripts: Scripts, settings: Settings, loser: str, now_ms: int
) -> MergeOutcome | None:
    """Finish the merge journaled in ``loser``'s hash from the step it reached; None
    when there is none (an intent never frozen: its index entry is dropped)."""
    head = await redis.hmget(keys.profile(loser), "mergedInto", "mergeEventId", "mergedAt")
    if head[0] is None:
        await redis.zrem(keys.MERGES_OPEN, loser)
        return None
    event_id = text(head[1]) if head[1] is not None else ""
    merged_at = text(head[2]) if head[2] is not None else iso_ms(now_ms)
    m = _Merge(redis, scripts, settings, loser, now_ms, event_id, merged_at)
    return await _drive(m, text(head[0]), fresh=False)


async def resume_open(
    redis: Client, scripts: Scripts, settings: Settings, now_ms: int, older_than_ms: int
) -> int:
    """Resume every journal of ``cdp:merges:open`` started more than ``older_than_ms``
    ago (its process presumably dead: the sweeper passes lease-ttl); returns how many."""
    losers = await redis.zrangebyscore(keys.MERGES_OPEN, "-inf", now_ms - older_than_ms)
    for loser in losers:
        await resume(redis, scripts, settings, text(loser), now_ms)
    return len(losers)


async def _freeze(m: _Merge, survivor: str) -> Frozen:
    """Step 1, with the counter zsets the loser's counters hash names (read first; a
    second call when the answer names more: the loser frozen, the list is final)."""
    names = [text(n) for n in await m.redis.hkeys(keys.counters(m.loser))]
    for _ in range(MAX_HOPS):
        frozen = await m.scripts.merge_freeze(
            loser=m.loser,
            survivor=survivor,
            counter_names=names,
            event_id=m.event_id,
            merged_at=m.merged_at,
        )
        if frozen.status != "STATE" or set(frozen.counter_names) <= set(names):
            return frozen
        names = sorted(set(names) | set(frozen.counter_names))
    raise MergeError(f"merge of {m.loser}: its counter names do not settle")


async def _drive(m: _Merge, survivor: str, *, fresh: bool) -> MergeOutcome:
    """Every step from where the journal is (``fresh``: this process wrote the intent)."""
    frozen = await _freeze(m, survivor)
    if frozen.status == "GONE":
        await m.redis.zrem(keys.MERGES_OPEN, m.loser)
        return MergeOutcome("gone", survivor)
    if frozen.status == "FROZEN":
        # Another merge holds the loser: finish it (its journal is its own), and say
        # where the loser's state went.
        if frozen.merge_state != "done":
            await _drive(m, frozen.other, fresh=False)
        return MergeOutcome("merged", await final_survivor(m.redis, frozen.other))
    if fresh:
        faults.point("merge:frozen")
    state = frozen.merge_state
    if state == "frozen":
        absorbed = await _absorb(m, frozen, survivor)
        if isinstance(absorbed, MergeOutcome):
            return absorbed
        state = await m.scripts.merge_advance(
            loser=m.loser, survivor=absorbed, done="frozen", to="absorbed"
        )
        faults.point("merge:absorbed")
    target = text(await m.redis.hget(keys.profile(m.loser), "mergedInto") or survivor)
    if state == "absorbed":
        await _repoint(m, frozen, target)
        state = await m.scripts.merge_advance(
            loser=m.loser, survivor=target, done="absorbed", to="repointed"
        )
        faults.point("merge:repointed")
    if state == "repointed":
        await _finish(m, frozen.counter_names)
        faults.point("merge:finished")
    await _record(m, target)
    return MergeOutcome("merged", await final_survivor(m.redis, target))


async def _absorb(m: _Merge, frozen: Frozen, survivor: str) -> str | MergeOutcome:
    """Step 2: the survivor folds the frozen state in (following it when it was merged
    away); the survivor it went to, or the outcome of a refusal."""
    limits = script_limits(m.settings, m.now_ms)
    due = m.now_ms + m.settings.lease_ttl_ms
    target = survivor
    for _ in range(MAX_HOPS):
        # Due before the change (a crash after it costs one needless evaluation).
        await m.redis.zadd(keys.SEGMENTS_DUE, {target: due}, lt=True)
        answer = await m.scripts.merge_absorb(
            survivor=target,
            loser=m.loser,
            counter_names=frozen.counter_names,
            state=frozen.state,
            limits=limits,
            now_iso=iso_ms(m.now_ms),
        )
        if answer.status in ("OK", "ALREADY"):
            return target
        if answer.status == "FORWARDED":
            moved = await m.scripts.merge_retarget(
                loser=m.loser, survivor=target, new_survivor=answer.detail
            )
            if not moved.ok:  # another process moved the journal on: follow it
                return await _drive(m, moved.merged_into or target, fresh=False)
            target = answer.detail
            continue
        # REFUSED or GONE: nothing of the loser went anywhere; it lives again.
        await m.scripts.merge_unfreeze(loser=m.loser, survivor=target)
        await m.redis.zrem(keys.MERGES_OPEN, m.loser)
        if answer.status == "GONE":
            return MergeOutcome("gone", target)
        await _record_refusal(m, target, answer.detail)
        return MergeOutcome("refused", target, answer.detail)
    raise MergeError(f"merge of {m.loser}: the survivor's forward pointers do not end")


async def final_survivor(redis: Client, cid: str) -> str:
    """The profile at the end of ``cid``'s forward pointers (``cid`` itself if live)."""
    return (await _chain(redis, cid))[-1]


async def _chain(redis: Client, cid: str) -> list[str]:
    """``cid`` and the profiles its forward pointers lead to, in order."""
    chain = [cid]
    for _ in range(MAX_HOPS):
        forward = await redis.hget(keys.profile(chain[-1]), "mergedInto")
        if forward is None:
            return chain
        chain.append(text(forward))
    raise MergeError(f"the forward pointers from {cid} do not end")


async def _repoint(m: _Merge, frozen: Frozen, target: str) -> None:
    """Step 3: every identifier of the loser names the final survivor if it names the
    loser, a profile the loser absorbed or one between the target and the final
    survivor. Done again when the final survivor moved meanwhile: a survivor frozen
    after the check repoints these identifiers itself (they are in its set)."""
    old = [m.loser, *frozen.merged]
    for _ in range(MAX_HOPS):
        chain = await _chain(m.redis, target)
        final = chain[-1]
        async with m.redis.pipeline(transaction=False) as pipe:
            for typed_id in frozen.identifiers:
                await m.scripts.identifier_repoint.queue(pipe, typed_id, final, old + chain[:-1])
            await pipe.execute()
        if await final_survivor(m.redis, final) == final:
            return
    raise MergeError(f"merge of {m.loser}: the survivor keeps moving")


async def _finish(m: _Merge, counter_names: tuple[str, ...]) -> None:
    """Step 4: the loser's keys deleted but its forward pointer."""
    names = list(counter_names)
    for _ in range(MAX_HOPS):
        reply = await m.scripts.merge_finish(loser=m.loser, counter_names=names)
        if reply[0] == "DONE":
            return
        if reply[0] != "COUNTERS":
            raise MergeError(f"merge of {m.loser}: finish found the journal at {reply[1:]}")
        names = list(reply[1:])
    raise MergeError(f"merge of {m.loser}: its counter names do not settle")


async def _record(m: _Merge, survivor: str) -> None:
    """Step 5: the loser leaves the live profiles and the due set, the merge is
    recorded in ``cdp:merges`` once (as apply_batch records it), the journal closes."""
    await m.redis.zrem(keys.PROFILES, m.loser)
    await m.redis.zrem(keys.SEGMENTS_DUE, m.loser)
    fields = {
        "status": "merged",
        "survivor": survivor,
        "merged": m.loser,
        "eventId": m.event_id,
        "ts": m.merged_at,
    }
    await add_once(
        m.redis, keys.MERGES, [(f"merge:{m.loser}", fields)], RECORDS_MAXLEN, RECORD_KEEP_MS
    )
    await m.redis.zrem(keys.MERGES_OPEN, m.loser)


async def _record_refusal(m: _Merge, survivor: str, reason: str) -> None:
    fields = {
        "status": "refused",
        "reason": reason,
        "survivor": survivor,
        "profile": m.loser,
        "eventId": m.event_id,
        "ts": m.merged_at,
    }
    name = f"refused:{m.loser}:{survivor}:{m.event_id}"
    await add_once(m.redis, keys.MERGES, [(name, fields)], RECORDS_MAXLEN, RECORD_KEEP_MS)
