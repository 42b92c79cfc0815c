"""Every script of ``lua/``, declared once: its keys and arguments by name, its reply typed.

Each declaration is the function laying out a call's KEYS and ARGV in the order of the
script's header (see ``cdp.scripts.typed``), with the reply's decoder. The arguments'
encoding (JSON of a dict, "" for none) is done here, so no caller writes an ARGV list.

``publish-n.lua`` is not declared here: its call is ``cdp.api.publisher``'s own
(``_Request``), which queues raw EVALSHAs and reloads the script itself on NOSCRIPT,
without the SCRIPT EXISTS round trip redis-py adds to a pipeline of registered scripts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec

from cdp import keys
from cdp.scripts.typed import Call, script
from cdp.streams import text

Bulk = bytes | str | None  # a bulk string as redis-py returns it; None for Lua's false

_json = msgspec.json.Encoder().encode


def _flag(reply: Any) -> bool:
    return bool(int(reply))


# -- the apply ----------------------------------------------------------------------


class BatchResult(msgspec.Struct, frozen=True):
    """The reply of ``apply_batch``."""

    lease_lost: bool = False
    applied: int = 0
    duplicates: int = 0
    profiles: tuple[str, ...] = ()  # the canonical id of each applied live event

    @classmethod
    def decode(cls, reply: Any) -> BatchResult:
        if text(reply[0]) == "LEASE_LOST":
            return cls(lease_lost=True)
        return cls(
            applied=int(reply[1]),
            duplicates=int(reply[2]),
            profiles=tuple(text(p) for p in reply[3:]),
        )


@script("apply_batch", keys=None, decode=BatchResult.decode)
def apply_batch(
    *,
    stream: str,
    lease: str,
    metrics: str,
    legacy_dedup_current: str,
    legacy_dedup_previous: str,
    legacy_dedup_shards: Sequence[str],
    group: str,
    worker_id: str,
    dedup_bucket: int,
    seen_expire_ms: int,
    counter_cutoff: str,
    now_iso: str,
    events: bytes,
    limits: bytes,
    prefix: str = keys.PREFIX,
) -> Call:
    """Apply a partition's ordered events and acknowledge them (``cdp.pipeline.apply``
    encodes ``events`` and ``limits``); ``worker_id`` "" skips the lease check.
    The ids applied are recorded in each profile's ``seen`` hash in ``dedup_bucket``
    (its time to live set to ``seen_expire_ms`` when the bucket moves on). The
    partition dedup hashes of before that layout are only read:
    ``legacy_dedup_shards``, the current and previous bucket's hash of each shard the
    events use, in the order their events number them."""
    return Call(
        [
            stream,
            lease,
            metrics,
            legacy_dedup_current,
            legacy_dedup_previous,
            *legacy_dedup_shards,
        ],
        [
            group,
            worker_id,
            dedup_bucket,
            seen_expire_ms,
            counter_cutoff,
            now_iso,
            prefix,
            events,
            limits,
        ],
    )


class ProfileReply(msgspec.Struct, frozen=True):
    """The reply of ``apply_profile``: OK with one answer per event, FORWARDED (the
    profile was merged into ``survivor``; ``merge_state`` of its journal) or GONE."""

    status: str
    # Per event: applied (True) or duplicate, and the identifiers handed back to the
    # caller to release, each with the guard rail that refused it ("" after a duplicate).
    events: tuple[tuple[bool, tuple[tuple[str, str], ...]], ...] = ()
    survivor: str = ""
    merge_state: str = ""

    @classmethod
    def decode(cls, reply: Any) -> ProfileReply:
        status = text(reply[0])
        if status == "FORWARDED":
            return cls(status, survivor=text(reply[1]), merge_state=text(reply[2]))
        if status != "OK":
            return cls(status)
        events = []
        for row in reply[1]:
            back = tuple((text(row[i]), text(row[i + 1])) for i in range(1, len(row), 2))
            events.append((int(row[0]) == 1, back))
        return cls(status, tuple(events))


@script("apply_profile", keys=None, decode=ProfileReply.decode)
def apply_profile(
    *,
    cid: str,
    counter_names: Sequence[str],
    dedup_bucket: int,
    seen_expire_ms: int,
    counter_cutoff: str,
    now_iso: str,
    create: bool,
    events: bytes,
    links: bytes,
    limits: bytes,
) -> Call:
    """Apply ordered events to profile ``cid`` alone, every key of its slot declared
    (the profile protocol: ``cdp.pipeline.profile_apply`` encodes ``events``, ``links``
    and ``limits``); ``counter_names``: every counter the events touch; ``create``:
    make the profile hash if it does not exist (else GONE)."""
    return Call(
        [
            *_profile_keys(cid),
            keys.outbox(cid),
            *(keys.counter(cid, name) for name in counter_names),
        ],
        [
            dedup_bucket,
            seen_expire_ms,
            counter_cutoff,
            now_iso,
            "1" if create else "0",
            events,
            links,
            limits,
        ],
    )


@script("identifier_release", keys=1, decode=_flag)
def identifier_release(identifier: str, cid: str) -> Call:
    """Delete the claim on typed ``identifier`` if it still names ``cid``; True if it did."""
    return Call([keys.identifier(identifier)], [cid])


# -- leases -------------------------------------------------------------------------


@script("lease_acquire", keys=1, decode=_flag)
def lease_acquire(lease: str, worker_id: str, ttl_ms: int) -> Call:
    """Take or renew ``lease`` for ``ttl_ms``; True when the caller holds it."""
    return Call([lease], [worker_id, ttl_ms])


@script("lease_release", keys=1, decode=_flag)
def lease_release(lease: str, worker_id: str) -> Call:
    """Give ``lease`` back if the caller holds it; True when released."""
    return Call([lease], [worker_id])


@script("metrics_tail", keys=1, decode=_flag)
def metrics_tail(
    tail: str, cursor_field: str, expected: str, cursor: str, counts: Mapping[str, int]
) -> Call:
    """Add ``counts`` to ``tail`` and move its ``cursor_field`` to ``cursor``, only if it
    still holds ``expected`` ("" for none); True when written."""
    pairs: list[str | int] = []
    for name, n in counts.items():
        pairs += [name, n]
    return Call([tail], [cursor_field, expected, cursor, *pairs])


@script("histogram_add", keys=1, decode=_flag)
def histogram_add(histogram: str, total: float, increments: Mapping[str, int]) -> Call:
    """Add a flush of observations (their ``total``, bucket and count ``increments``) to
    ``histogram``'s hash, atomically."""
    pairs: list[str | int] = []
    for name, n in increments.items():
        pairs += [name, n]
    return Call([histogram], [repr(float(total)), *pairs])


# -- segments -----------------------------------------------------------------------


class ProfileRow(msgspec.Struct, frozen=True):
    """One profile of a ``profile_view`` reply, as Redis sent it; a profile that does not
    exist (or was merged away) has no version."""

    version: Bulk
    merged_into: Bulk
    user: Bulk  # "user:<userId>"
    last_seen_ms: Bulk
    first_seen: Bulk  # ISO-8601
    traits: list[Any]  # [trait, cell JSON, ...]
    counters: list[Any]  # [name, [bucket, count, ...], ...]
    segments: list[Any]  # [segment, state JSON, ...]
    first_identifier: Bulk  # when there is no userId
    evaluated_ms: Bulk  # the time of the last accepted evaluation
    evaluations: Bulk  # how many evaluations were accepted (the write's token)
    outbox: int = 0  # segment events of its outbox not relayed yet

    @classmethod
    def decode_all(cls, reply: Any) -> list[ProfileRow]:
        return [cls(*row) for row in reply]


def _profile_view_keys(cid: str, counters: Sequence[str]) -> list[str]:
    return [
        keys.profile(cid),
        keys.traits(cid),
        keys.identifiers(cid),
        keys.profile_segments(cid),
        keys.outbox(cid),
        *(keys.counter(cid, name) for name in counters),
    ]


@script("profile_view", keys=None, decode=ProfileRow.decode_all)
def profile_view(
    cids: Sequence[str], *, traits: Collection[str] | None = None, counters: Collection[str]
) -> Call:
    """What segment rules need of the profiles ``cids``, one consistent snapshot: the
    ``traits`` (None: every one) and ``counters`` named (``cdp.segments.rules.Reads``).
    Every key is declared: on a Redis Cluster, one profile per call."""
    names = sorted(counters)
    return Call(
        [key for cid in cids for key in _profile_view_keys(cid, names)],
        ["*" if traits is None else _json(sorted(traits)), _json(names)],
    )


class TransitionRequest(msgspec.Struct, frozen=True):
    """One profile's evaluation, as ``segment_transition`` takes it: move ``cid`` into or
    out of segments (``wanted``) as evaluated at ``at_ms`` from what was read
    (``version``, ``read_evaluations``), and reschedule it at ``due_ms`` (None: never);
    ``dropped``: memberships of segments no longer defined; ``who`` names the profile in
    the events."""

    cid: str
    version: str
    at_iso: str
    at_ms: int
    due_ms: int | None
    wanted: dict[str, bool]
    who: dict[str, str]
    dropped: Sequence[str] = ()
    read_evaluations: str = ""


class _TransitionArg(msgspec.Struct, frozen=True):
    """A TransitionRequest as the script's ARGV[5] spells it (numbers as strings)."""

    cid: str
    version: str
    at: str
    at_ms: str = msgspec.field(name="atMs")
    due: str
    wanted: dict[str, bool]
    who: dict[str, str]
    dropped: Sequence[str]
    evaluations: str


class Transition(msgspec.Struct, frozen=True):
    """One profile's answer of ``segment_transition``: OK (with the eventIds emitted),
    STALE, GONE."""

    status: str
    event_ids: tuple[str, ...] = ()

    @classmethod
    def decode(cls, reply: Any) -> Transition:
        return cls(text(reply[0]), tuple(text(e) for e in reply[1:]))

    @classmethod
    def decode_all(cls, reply: Any) -> list[Transition]:
        return [cls.decode(one) for one in reply]


@script("segment_transition", keys=None, decode=Transition.decode_all)
def segment_transition(
    profiles: Sequence[TransitionRequest],
    *,
    events_maxlen: int,
    definitions_version: str,
    outbox: bool = False,
) -> Call:
    """Write the evaluations of ``profiles`` made with the definitions of
    ``definitions_version``; one answer per profile, in order. ``outbox``: each
    transition goes to the profile's outbox (a Redis Cluster: one profile per call), the
    caller writes the due index and checks the definitions version after the call;
    else the events, the members zsets, the due index and the version check are in the
    call (one Redis)."""
    args = [
        _TransitionArg(
            cid=p.cid,
            version=p.version,
            at=p.at_iso,
            at_ms=str(p.at_ms),
            due="" if p.due_ms is None else str(p.due_ms),
            wanted=p.wanted,
            who=p.who,
            dropped=p.dropped,
            evaluations=p.read_evaluations,
        )
        for p in profiles
    ]
    if outbox:
        per_profile = [
            key
            for p in profiles
            for key in (keys.profile(p.cid), keys.profile_segments(p.cid), keys.outbox(p.cid))
        ]
        return Call(
            per_profile,
            ["outbox", definitions_version, events_maxlen, keys.SEGMENT_EVENTS, _json(args), "[]"],
        )
    names = sorted({name for p in profiles for name in (*p.wanted, *p.dropped)})
    return Call(
        [
            keys.SEGMENT_EVENTS,
            keys.SEGMENTS_DUE,
            keys.SEGMENTS_VERSION,
            *(keys.segment_members(name) for name in names),
            *(key for p in profiles for key in (keys.profile(p.cid), keys.profile_segments(p.cid))),
        ],
        [
            "direct",
            definitions_version,
            events_maxlen,
            keys.SEGMENT_EVENTS,
            _json(args),
            _json(names),
        ],
    )


@script("segment_forget", keys=None, decode=int)
def segment_forget(segment: str, cids: Sequence[str], *, outbox: bool = False) -> Call:
    """End the memberships of deleted ``segment`` of ``cids`` (read from its members
    zset); returns how many. ``outbox`` (a cluster: one profile per call): the members
    zset change goes to each profile's outbox; else it is made here, and nothing is done
    (0) once the segment is defined again."""
    if outbox:
        per_profile = [
            key for cid in cids for key in (keys.profile_segments(cid), keys.outbox(cid))
        ]
        return Call(per_profile, ["outbox", segment, *cids])
    return Call(
        [
            keys.SEGMENTS,
            keys.segment_members(segment),
            *(keys.profile_segments(cid) for cid in cids),
        ],
        ["direct", segment, *cids],
    )


# -- the outbox relay ---------------------------------------------------------------


def _flags(reply: Any) -> list[bool]:
    return [bool(int(r)) for r in reply]


@script("outbox_add", keys=2, decode=_flags)
def outbox_add(
    *,
    stream: str,
    entries: Sequence[tuple[str, Sequence[Any]]],
    maxlen: int,
    now_ms: int,
    keep_ms: int,
) -> Call:
    """Append ``entries`` ((id, fields) in outbox order) to ``stream``, each id at most
    once within ``keep_ms``; per entry True when appended now."""
    return Call(
        [stream, keys.record_marks(stream)],
        [now_ms, keep_ms, maxlen, _json([[i, list(f)] for i, f in entries])],
    )


@script("outbox_pop", keys=2, decode=int)
def outbox_pop(cid: str, owner: str, entries: Sequence[bytes]) -> Call:
    """Pop ``entries`` (raw, in order) from the head of ``cid``'s outbox while they are its
    head; drop ``owner``'s relay lease once it is empty. The outbox's length after."""
    return Call([keys.outbox(cid), keys.outbox_relay(cid)], [owner, *entries])


# -- erasure ------------------------------------------------------------------------


class Erased(msgspec.Struct, frozen=True):
    """The reply of ``erase_profile``: ERASED (identifiers, EXIT events), FORWARDED
    (``survivor``), GONE, or COUNTERS (``names`` the call did not declare)."""

    status: str
    identifiers: int = 0
    exits: int = 0
    survivor: str = ""
    names: tuple[str, ...] = ()

    @classmethod
    def decode(cls, reply: Any) -> Erased:
        status = text(reply[0])
        if status == "ERASED":
            return cls(status, int(reply[1]), int(reply[2]))
        if status == "FORWARDED":
            return cls(status, survivor=text(reply[1]))
        if status == "COUNTERS":
            return cls(status, names=tuple(text(n) for n in reply[1:]))
        return cls(status)


@script("erase_profile", keys=None, decode=Erased.decode)
def erase_profile(
    *,
    cid: str,
    counter_names: Collection[str],
    at_iso: str,
    job_id: str,
    events_maxlen: int,
    prefix: str = keys.PREFIX,
) -> Call:
    """The erasure step in profile ``cid``'s slot (``cdp.erasure``): EXITs to its outbox,
    its state deleted, a marker left; ``counter_names``: the counters hash's names."""
    return Call(
        keys.profile_keys(cid, sorted(counter_names)),
        [prefix, cid, at_iso, job_id, events_maxlen],
    )


# -- the cross-slot merge (cdp.merge) -----------------------------------------------


def _texts(reply: Any) -> tuple[str, ...]:
    return tuple(text(x) for x in reply)


class Frozen(msgspec.Struct, frozen=True):
    """The reply of ``merge_freeze``: the loser's state (STATE), or FROZEN towards
    ``other``, or GONE. ``state`` is passed as is to ``merge_absorb``."""

    status: str
    merge_state: str = ""
    state: Bulk = None
    counter_names: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    other: str = ""

    @classmethod
    def decode(cls, reply: Any) -> Frozen:
        status = text(reply[0])
        if status == "STATE":
            return cls(
                status,
                merge_state=text(reply[1]),
                state=reply[2],
                counter_names=_texts(reply[3]),
                identifiers=_texts(reply[4]),
                merged=_texts(reply[5]),
            )
        if status == "FROZEN":
            return cls(status, merge_state=text(reply[2]), other=text(reply[1]))
        return cls(status)


def _profile_keys(cid: str) -> list[str]:
    """KEYS[1..7] of merge_freeze, merge_finish and apply_profile: a profile's keys but
    its counter zsets and its outbox."""
    return [
        keys.profile(cid),
        keys.traits(cid),
        keys.identifiers(cid),
        keys.counters(cid),
        keys.seen(cid),
        keys.profile_segments(cid),
        keys.merged(cid),
    ]


@script("merge_freeze", keys=None, decode=Frozen.decode)
def merge_freeze(
    *, loser: str, survivor: str, counter_names: Sequence[str], event_id: str, merged_at: str
) -> Call:
    """Freeze ``loser`` towards ``survivor`` (or find it so) and read its whole state,
    with the counter zsets of ``counter_names``."""
    zsets = [keys.counter(loser, name) for name in counter_names]
    return Call([*_profile_keys(loser), *zsets], [survivor, event_id, merged_at])


class Absorbed(msgspec.Struct, frozen=True):
    """The reply of ``merge_absorb``: OK, ALREADY, FORWARDED (``detail``: the survivor's
    own survivor), REFUSED (``detail``: the guard rail), GONE."""

    status: str
    detail: str = ""

    @classmethod
    def decode(cls, reply: Any) -> Absorbed:
        return cls(text(reply[0]), text(reply[1]) if len(reply) > 1 else "")


@script("merge_absorb", keys=None, decode=Absorbed.decode)
def merge_absorb(
    *,
    survivor: str,
    loser: str,
    counter_names: Sequence[str],
    state: Bulk,
    limits: bytes,
    now_iso: str,
) -> Call:
    """Fold the loser's ``state`` (``merge_freeze``'s) into ``survivor``, once."""
    return Call(
        [
            keys.profile(survivor),
            keys.traits(survivor),
            keys.identifiers(survivor),
            keys.counters(survivor),
            keys.seen(survivor),
            keys.merged(survivor),
            keys.outbox(survivor),
            *(keys.counter(survivor, name) for name in counter_names),
        ],
        [loser, state or "", limits, now_iso, keys.SEGMENT_EVENTS, survivor],
    )


class Retargeted(msgspec.Struct, frozen=True):
    """The reply of ``merge_retarget``: ``ok``, else where the journal is."""

    ok: bool
    merged_into: str = ""
    merge_state: str = ""

    @classmethod
    def decode(cls, reply: Any) -> Retargeted:
        if text(reply[0]) == "OK":
            return cls(True)
        return cls(False, text(reply[1]), text(reply[2]))


@script("merge_retarget", keys=1, decode=Retargeted.decode)
def merge_retarget(*, loser: str, survivor: str, new_survivor: str) -> Call:
    """Move ``loser``'s frozen merge from ``survivor`` to ``new_survivor``."""
    return Call([keys.profile(loser)], [survivor, new_survivor])


@script("merge_unfreeze", keys=1, decode=_flag)
def merge_unfreeze(*, loser: str, survivor: str) -> Call:
    """Undo ``loser``'s freeze towards ``survivor`` if nothing went further; True if so."""
    return Call([keys.profile(loser)], [survivor])


@script("merge_advance", keys=1, decode=text)
def merge_advance(*, loser: str, survivor: str, done: str, to: str) -> Call:
    """The journal of ``loser`` moves from state ``done`` to ``to``; its state now."""
    return Call([keys.profile(loser)], [survivor, done, to])


@script("identifier_repoint", keys=1, decode=_flag)
def identifier_repoint(typed_id: str, survivor: str, old: Sequence[str]) -> Call:
    """Point ``typed_id`` at ``survivor`` if it names one of ``old``; True if changed."""
    return Call([keys.identifier(typed_id)], [survivor, *old])


@script("merge_finish", keys=None, decode=_texts)
def merge_finish(*, loser: str, counter_names: Sequence[str]) -> Call:
    """Delete ``loser``'s keys but its forward pointer (journal at repointed or done):
    ("DONE",), ("COUNTERS", name...) or ("STATE", state)."""
    zsets = [keys.counter(loser, name) for name in counter_names]
    return Call([*_profile_keys(loser), *zsets], [])


# -- replay -------------------------------------------------------------------------


def _entry_or_none(reply: Any) -> str | None:
    return None if reply is None else text(reply)


@script("replay_record", keys=3, decode=_entry_or_none)
def replay_record(
    *, stream: str, marks: str, metrics: str, record_id: str, record_ms: str, event: bytes
) -> Call:
    """Publish a parked or dropped event (``event``, mode "import") to ``stream`` and mark
    ``record_id`` in ``marks``, at most once; the new entry id, or None if already marked."""
    return Call([stream, marks, metrics], [record_id, record_ms, event])
