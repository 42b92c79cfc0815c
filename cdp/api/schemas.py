"""The bodies of the HTTP API as msgspec models: the source of the OpenAPI schemas.

``cdp/api/openapi.py`` turns every model listed in ``BASE_MODELS`` (Structs; the
console's are in ``cdp/api/console_schemas.py``) and ``NAMED`` (named string, number
and union types) into ``components.schemas`` of ``cdp/api/openapi.json`` with
``msgspec.json.schema_components``: a Struct's docstring is its description, a field's
``msgspec.Meta`` its constraints (pattern, bounds, lengths, description;
``extra_json_schema`` for what JSON Schema says but msgspec's types do not, such as
``example`` or ``format``). The wire Structs of ``cdp.events`` (``IngestEvent``,
``Payload``) are used as they are.

How to read the models:

- ``X | UnsetType = UNSET``: the field may be absent (not nullable); ``X | None``:
  it may be null; neither: required.
- ``ref("Name")``: the field's schema is ``{"$ref": "#/components/schemas/Name"}``, for
  the named non-Struct types of ``NAMED`` (``EventTime``, ``Usable``, ``Rule``...).
- ``json_schema_extra`` (a ClassVar of a Struct): merged into the Struct's schema, for
  rules across fields (``anyOf`` / ``allOf``) that a Struct's fields cannot state.

Most of these models only describe: the routes keep their own validators (their
messages are pinned by tests, and ``tests/unit/test_contract.py`` requires the document
and the validators to agree on every value it generates). ``IngestEvent`` decodes
``POST /cdp/ingest``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cdp.events import DATE_TIME, EVENT_TIME, NOT_BLANK, WHITESPACE, IngestEvent
from cdp.identity import BLOCKED_VALUES
from cdp.replay import MAX_EVENT_IDS, SINCE_DURATION
from cdp.segments.rules import DURATION
from cdp.segments.webhooks import URL

SCHEMA_REF = "#/components/schemas/{name}"


def ref(name: str, **extra: Any) -> Meta:
    """A field's Meta whose schema is a reference to the named schema ``name``."""
    return Meta(extra_json_schema={"$ref": SCHEMA_REF.format(name=name), **extra})


def schema_ref(name: str) -> dict[str, str]:
    """``{"$ref": ...}`` of a named schema, for ``json_schema_extra``."""
    return {"$ref": SCHEMA_REF.format(name=name)}


# -- named types (not Structs): components.schemas by name ------------------------------

ID_MAX = 512
SAFE_INTEGER = 2**53 - 1  # a number used as an id is exact up to here (JavaScript's limit)
RESERVED_NAME = "^([^$]|$)"  # names starting with $ are reserved


def _case_insensitive(word: str) -> str:
    kelvin = "\\u212a"  # K (Kelvin sign) lower-cases to k
    out = ""
    for ch in word:
        if ch.isalpha():
            out += f"[{ch.lower()}{ch.upper()}{kelvin if ch.lower() == 'k' else ''}]"
        else:
            out += "\\" + ch if ch in "[]" else ch
    return out


# The placeholder values of cdp.identity (the default of the blocked-values setting),
# any case, surrounded by any whitespace.
BLOCKED = (
    f"^{WHITESPACE}*("
    + "|".join(_case_insensitive(w) for w in sorted(BLOCKED_VALUES, key=lambda w: (len(w), w)))
    + f"){WHITESPACE}*$"
)

IdNumber = Annotated[float, Meta(ge=-SAFE_INTEGER, le=SAFE_INTEGER)]

EventTime = Annotated[
    str,
    Meta(
        pattern=EVENT_TIME,
        description=(
            "An event's own time: RFC 3339 with a zone (Z or ±hh:mm), from 1970-01-02 to"
            " 9999-12-30 (so that any offset stays within the times events are kept in), at"
            " most max-future-skew (default 5m) ahead of the server clock. Kept to the"
            " millisecond."
        ),
        extra_json_schema={"format": "date-time", "example": "2025-10-04T11:00:00Z"},
    ),
]
DateTime = Annotated[
    str,
    Meta(
        pattern=DATE_TIME,
        description="RFC 3339 with a zone (Z or ±hh:mm), years 0001 to 9999.",
        extra_json_schema={"format": "date-time", "example": "2025-10-04T11:00:01Z"},
    ),
]
Duration = Annotated[
    str,
    Meta(
        pattern=DURATION,
        description="A whole number and a unit: ms, s, m, h or d.",
        extra_json_schema={"example": "24h"},
    ),
]
Usable = Annotated[
    str,
    Meta(
        description=(
            "An identifier value that names someone: not blank and not a placeholder SDKs"
            " send when they have nothing (null, undefined, 0, -1, anonymous, unknown, none,"
            " nil, [object object]; any case, surrounding whitespace ignored). The list is the"
            " server's `blocked-values` setting; the pattern shows the default."
        ),
        extra_json_schema={"not": {"pattern": BLOCKED}},
    ),
]
CallId = Annotated[
    Annotated[str, Meta(max_length=ID_MAX)] | IdNumber | None,
    Meta(
        description=(
            "An id as SDKs send it: a string of at most 512 characters, or a number within"
            " ±9007199254740991 (used as its decimal text; 5.0 is 5)."
        )
    ),
]
UsableCallId = Annotated[
    Annotated[str, Meta(max_length=ID_MAX, extra_json_schema={"not": {"pattern": BLOCKED}})]
    | Annotated[IdNumber, Meta(extra_json_schema={"not": {"enum": [0, -1]}})],
    Meta(
        description="A CallId that names someone: a Usable string, or a number other than 0 and -1."
    ),
]
PresentCallId = Annotated[
    Annotated[str, Meta(min_length=1, max_length=ID_MAX)] | IdNumber,
    Meta(description="A CallId that is present: a non-empty string or a number."),
]
RULE_DOC = (
    'One of: {"all": [Rule, ...]}, {"any": [Rule, ...]}, {"not": Rule}, {"trait": name,'
    ' "op": ..., "value": ...}, {"count": {"event"?: name, "within": Duration, "gte": n}},'
    ' {"inactive": Duration}, {"returned": {"after": Duration, "within": Duration}}. Trait'
    " ops: eq, ne, contains (any value), in (a list), exists (no value needed), gt, gte, lt,"
    " lte (a number or an RFC 3339 time)."
)
RULE_KINDS = (
    "RuleAll",
    "RuleAny",
    "RuleNot",
    "RuleTraitExists",
    "RuleTraitEquals",
    "RuleTraitIn",
    "RuleTraitOrder",
    "RuleCount",
    "RuleInactive",
    "RuleReturned",
)
Rule = Annotated[
    Any,
    Meta(
        description=RULE_DOC,
        extra_json_schema={
            "anyOf": [schema_ref(kind) for kind in RULE_KINDS],
            "example": {
                "all": [
                    {"trait": "plan", "op": "eq", "value": "pro"},
                    {"count": {"event": "Purchase", "within": "7d", "gte": 3}},
                ]
            },
        },
    ),
]

# A field typed ``RuleRef`` is {"$ref": ".../Rule"}, and so on.
RuleRef = Annotated[Any, ref("Rule")]
DurationRef = Annotated[str, ref("Duration")]
DateTimeRef = Annotated[str, ref("DateTime")]
EventTimeRef = Annotated[str, ref("EventTime")]
CallIdRef = Annotated[Any, ref("CallId")]
PresentCallIdRef = Annotated[Any, ref("PresentCallId")]


# -- simple answers -----------------------------------------------------------------------


class Status(msgspec.Struct):
    status: str


class Error(msgspec.Struct):
    status: Literal["error"]
    message: str


class Accepted(msgspec.Struct):
    status: Literal["accepted"]
    eventId: str


# -- segments -------------------------------------------------------------------------------


class RuleAll(msgspec.Struct, forbid_unknown_fields=True):
    all: Annotated[list[RuleRef], Meta(min_length=1)]


class RuleAny(msgspec.Struct, forbid_unknown_fields=True):
    any: Annotated[list[RuleRef], Meta(min_length=1)]


class RuleNot(msgspec.Struct, forbid_unknown_fields=True):
    not_: RuleRef = msgspec.field(name="not")


class RuleTraitExists(msgspec.Struct, forbid_unknown_fields=True):
    trait: str
    op: Literal["exists"]
    value: Any | UnsetType = UNSET


class RuleTraitEquals(msgspec.Struct, forbid_unknown_fields=True):
    trait: str
    op: Literal["eq", "ne", "contains"]
    value: Any


class RuleTraitIn(msgspec.Struct, forbid_unknown_fields=True):
    trait: str
    op: Literal["in"]
    value: list[Any]


class RuleTraitOrder(msgspec.Struct, forbid_unknown_fields=True):
    trait: str
    op: Literal["gt", "gte", "lt", "lte"]
    value: Annotated[
        Any, Meta(extra_json_schema={"anyOf": [{"type": "number"}, schema_ref("DateTime")]})
    ]


class RuleCountSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    event: Annotated[str | None, Meta(description="A TRACK event name; any TRACK when absent.")] = (
        None
    )
    within: DurationRef
    gte: Annotated[int, Meta(ge=1)]


class RuleCount(msgspec.Struct, forbid_unknown_fields=True):
    count: RuleCountSpec


class RuleInactive(msgspec.Struct, forbid_unknown_fields=True):
    inactive: DurationRef


class RuleReturnedSpec(msgspec.Struct, forbid_unknown_fields=True):
    after: DurationRef
    within: DurationRef


class RuleReturned(msgspec.Struct, forbid_unknown_fields=True):
    returned: RuleReturnedSpec


class SegmentDefinition(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `PUT /cdp/segments/{name}`."""

    rule: RuleRef
    description: str | UnsetType = UNSET


class SegmentBackfill(msgspec.Struct):
    """Progress of the evaluation of existing profiles after the last PUT."""

    state: Literal["running", "done"] | UnsetType = UNSET
    scanned: int | UnsetType = UNSET
    total: int | UnsetType = UNSET


class Segment(msgspec.Struct, kw_only=True):
    name: str
    rule: RuleRef
    description: str | UnsetType = UNSET
    builtin: bool
    members: Annotated[int, Meta(description="Current member count.")]
    backfill: SegmentBackfill | UnsetType = UNSET


class SegmentList(msgspec.Struct):
    segments: list[Segment]


class Members(msgspec.Struct):
    segment: str
    members: Annotated[list[str], Meta(description="Canonical profile ids.")]
    cursor: Annotated[
        str | None, Meta(description="Pass as ?cursor= for the next page; null at the end.")
    ]


# -- webhooks -------------------------------------------------------------------------------


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of `POST /cdp/webhooks`."""

    url: Annotated[
        str,
        Meta(
            max_length=2048,
            pattern=URL,
            description=(
                "http:// or https://, an ASCII host name or address (punycode for"
                " international names), an optional port, then printable ASCII."
            ),
            extra_json_schema={"example": "https://hooks.example.com/cdp"},
        ),
    ]
    segments: Annotated[
        list[Annotated[str, Meta(min_length=1)]] | None,
        Meta(description="Only these segments' events; absent or null for all."),
    ] = None
    secret: (
        Annotated[
            str,
            Meta(
                min_length=16,
                description=(
                    "Signing secret; generated when absent, as whsec_<base64 of 32 random"
                    " bytes> (Standard Webhooks). A secret starting with whsec_ must go on"
                    " with the base64 of 24 to 64 bytes, which are the HMAC key; the key of"
                    " any other secret is its UTF-8 bytes."
                ),
                extra_json_schema={"example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
            ),
        ]
        | UnsetType
    ) = UNSET


class Webhook(msgspec.Struct, kw_only=True):
    id: str
    url: str
    secret: Annotated[str, Meta(description="In full only in the answer to its creation.")]
    segments: list[str] | None | UnsetType = UNSET
    createdAt: str | UnsetType = UNSET
    delivery: (
        Annotated[
            dict[str, str],
            Meta(
                description="Delivery state: cursor, attempts, nextAt, lastError, delivered, dead."
            ),
        ]
        | UnsetType
    ) = UNSET


class WebhookList(msgspec.Struct):
    webhooks: list[Webhook]


# -- Segment's tracking API (/v1) -----------------------------------------------------------

WriteKey = Annotated[
    str | None,
    Meta(description="The write key, when not sent as HTTP Basic auth (analytics.js)."),
]
TraitsObject = Annotated[dict[str, Any], Meta(max_length=1000)]
_UNBOUNDED_MESSAGE_ID = Annotated[str, Meta(max_length=128)] | IdNumber | None


class CallContext(msgspec.Struct):
    traits: Annotated[
        TraitsObject | None,
        Meta(description="Traits of any call; `email` here names the person too."),
    ] = None


class CallCommon(msgspec.Struct, kw_only=True):
    """What every call may hold (a body of /v1/identify, /v1/track... or an item of a
    batch); unknown fields are ignored."""

    userId: CallIdRef | UnsetType = UNSET
    anonymousId: CallIdRef | UnsetType = UNSET
    messageId: (
        Annotated[
            _UNBOUNDED_MESSAGE_ID,
            Meta(
                description=(
                    "Becomes the eventId: a retried call is deduplicated. Generated when"
                    " absent or empty."
                )
            ),
        ]
        | UnsetType
    ) = UNSET
    traits: TraitsObject | None | UnsetType = UNSET
    context: CallContext | None | UnsetType = UNSET
    properties: dict[str, Any] | None | UnsetType = UNSET
    integrations: Annotated[Any, Meta(description="Kept as sent (not interpreted).")] = UNSET
    timestamp: (
        Annotated[
            str,
            Meta(
                pattern=EVENT_TIME,
                description="When it happened (used unless the clock-skew correction applies).",
                extra_json_schema={"format": "date-time", "example": "2025-10-04T11:00:00Z"},
            ),
        ]
        | None
        | UnsetType
    ) = UNSET
    originalTimestamp: (
        Annotated[
            str,
            Meta(
                pattern=DATE_TIME,
                description="The client's clock when it happened.",
                extra_json_schema={"format": "date-time", "example": "2025-10-04T11:00:01Z"},
            ),
        ]
        | None
        | UnsetType
    ) = UNSET
    sentAt: (
        Annotated[
            str,
            Meta(
                pattern=DATE_TIME,
                description="The client's clock when it sent the call.",
                extra_json_schema={"format": "date-time", "example": "2025-10-04T11:00:01Z"},
            ),
        ]
        | None
        | UnsetType
    ) = UNSET
    writeKey: WriteKey | UnsetType = UNSET


def _email_in(where: str) -> dict[str, Any]:
    """``where`` (traits or context.traits) is an object whose email is Usable."""
    traits = {
        "type": "object",
        "required": ["email"],
        "properties": {"email": schema_ref("Usable")},
    }
    if where == "traits":
        return {"required": ["traits"], "properties": {"traits": traits}}
    return {
        "required": ["context"],
        "properties": {
            "context": {"type": "object", "required": ["traits"], "properties": {"traits": traits}}
        },
    }


_NO_TRAITS_EMAIL = {"properties": {"traits": {"not": {"type": "object", "required": ["email"]}}}}
_CONTEXT_TRAITS = {
    "required": ["context"],
    "properties": {
        "context": {
            "type": "object",
            "required": ["traits"],
            "properties": {"traits": {"type": "object", "minProperties": 1}},
        }
    },
}


def names_someone(
    ids: tuple[str, str], email: Literal["identify", "activity", "group"]
) -> dict[str, Any]:
    """The rule "a usable id or email", as the server reads a call of that kind
    (cdp.api.tracking_spec): one of the two id fields (a UsableCallId), or an email in
    context.traits (where traits has none), or in traits: for identify always, for the
    others only beside a non-empty context.traits, for group never."""
    alternatives: list[dict[str, Any]] = [
        {"required": [name], "properties": {name: schema_ref("UsableCallId")}} for name in ids
    ]
    if email == "group":
        alternatives.append(_email_in("context"))
        return {"anyOf": alternatives}
    alternatives.append({"allOf": [_email_in("context"), _NO_TRAITS_EMAIL]})
    if email == "identify":
        alternatives.append(_email_in("traits"))
    else:
        alternatives.append({"allOf": [_email_in("traits"), _CONTEXT_TRAITS]})
    return {"anyOf": alternatives}


_USER_OR_ANON = ("userId", "anonymousId")
_NEEDS = "Needs a usable userId, {other} or email ({where}). `type` is taken from the path."
_ACTIVITY_EMAIL = (
    "traits.email or context.traits.email, traits.email only beside a non-empty context.traits"
)


class IdentifyCall(CallCommon, kw_only=True):
    __doc__ = (
        "Who the person is: traits (and context.traits) are merged into the profile. "
        + _NEEDS.format(other="anonymousId", where="traits.email or context.traits.email")
    )
    json_schema_extra: ClassVar[dict[str, Any]] = names_someone(_USER_OR_ANON, "identify")


class TrackCall(CallCommon, kw_only=True):
    __doc__ = (
        "Something the person did: `event` names it (counted in that name's rolling counter). "
        + _NEEDS.format(other="anonymousId", where=_ACTIVITY_EMAIL)
    )
    json_schema_extra: ClassVar[dict[str, Any]] = names_someone(_USER_OR_ANON, "activity")

    event: Annotated[
        Annotated[
            str,
            Meta(
                max_length=ID_MAX,
                extra_json_schema={"allOf": [{"pattern": NOT_BLANK}, {"pattern": RESERVED_NAME}]},
            ),
        ]
        | IdNumber,
        Meta(description="The event name: not blank; names starting with $ are reserved."),
    ]


class AliasCall(CallCommon, kw_only=True):
    __doc__ = (
        "Links previousId (an anonymousId) to userId, merging their profiles. "
        + _NEEDS.format(other="previousId", where=_ACTIVITY_EMAIL)
    )
    json_schema_extra: ClassVar[dict[str, Any]] = names_someone(
        ("userId", "previousId"), "activity"
    )

    previousId: PresentCallIdRef
    userId: PresentCallIdRef


class PageCall(CallCommon, kw_only=True):
    __doc__ = (
        "A page view: activity, counted under $page; `name` is kept as the event name. "
        + _NEEDS.format(other="anonymousId", where=_ACTIVITY_EMAIL)
    )
    json_schema_extra: ClassVar[dict[str, Any]] = names_someone(_USER_OR_ANON, "activity")

    name: CallIdRef | UnsetType = UNSET


class ScreenCall(CallCommon, kw_only=True):
    __doc__ = (
        "A screen view: activity, counted under $screen; `name` is kept as the event name. "
        + _NEEDS.format(other="anonymousId", where=_ACTIVITY_EMAIL)
    )
    json_schema_extra: ClassVar[dict[str, Any]] = names_someone(_USER_OR_ANON, "activity")

    name: CallIdRef | UnsetType = UNSET


class GroupCall(CallCommon, kw_only=True):
    __doc__ = (
        "The person's group: sets the traits groupId and groupTraits (the call's `traits`). "
        + _NEEDS.format(other="anonymousId", where="context.traits.email only")
    )
    json_schema_extra: ClassVar[dict[str, Any]] = names_someone(_USER_OR_ANON, "group")

    groupId: PresentCallIdRef


BATCH_ITEM = (
    "One call, as on the single routes (IdentifyCall, TrackCall, AliasCall, PageCall,"
    " ScreenCall, GroupCall) with `type` (identify, track, alias, page, screen or group)."
    " Calls are judged one by one: the valid ones are stored, the others listed in the"
    " answer's `rejected` (the batch is still answered 200, as Segment does)."
)


class SegmentBatch(msgspec.Struct, kw_only=True):
    """The body of `POST /v1/batch` (`/v1/b`, `/v1/import`)."""

    batch: Annotated[
        list[Annotated[dict[str, Any], Meta(description=BATCH_ITEM)]],
        Meta(min_length=1, max_length=2500),
    ]
    context: (
        Annotated[dict[str, Any] | None, Meta(description="Merged into each call's context.")]
        | UnsetType
    ) = UNSET
    integrations: dict[str, Any] | None | UnsetType = UNSET
    sentAt: (
        Annotated[
            str,
            Meta(
                pattern=DATE_TIME,
                description="Used for the calls that have no sentAt of their own.",
                extra_json_schema={"format": "date-time", "example": "2025-10-04T11:00:01Z"},
            ),
        ]
        | None
        | UnsetType
    ) = UNSET
    writeKey: WriteKey | UnsetType = UNSET


class Rejected(msgspec.Struct, kw_only=True):
    index: int | UnsetType = UNSET
    messageId: str | None | UnsetType = UNSET
    code: str | UnsetType = UNSET
    message: str | UnsetType = UNSET


class SegmentSuccess(msgspec.Struct, kw_only=True):
    """`success` is true once the request is processed; in a batch, calls that broke a
    rule are in `rejected` (all of them, when none was valid)."""

    success: bool
    rejected: list[Rejected] | UnsetType = UNSET


class SegmentError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    rejected: list[Rejected] | UnsetType = UNSET


# -- profiles and erasure ------------------------------------------------------------------

JOB_STEPS = (
    "The last step of the job done: suppressed, unindexed, erased, resuppressed,"
    ' reunindexed, relayed, pointers, unlisted, audited, cleared, purged ("" before the first).'
)


class Job(msgspec.Struct, kw_only=True):
    id: str | UnsetType = UNSET
    state: Literal["erasing", "purging", "done", "failed"] | UnsetType = UNSET
    step: Annotated[str, Meta(description=JOB_STEPS)] | UnsetType = UNSET
    canonicalId: str | UnsetType = UNSET
    createdAt: str | UnsetType = UNSET
    finishedAt: str | UnsetType = UNSET
    identifiers: int | UnsetType = UNSET
    exits: int | UnsetType = UNSET
    purgedEvents: int | UnsetType = UNSET
    href: str | UnsetType = UNSET
    error: str | UnsetType = UNSET


class ProfileTrait(msgspec.Struct):
    v: Annotated[Any, Meta(description="Any JSON value but null.")]
    ts: str
    eventId: str


class ProfileTombstone(msgspec.Struct, kw_only=True):
    ts: str | UnsetType = UNSET
    eventId: str | UnsetType = UNSET


class ProfileCounter(msgspec.Struct, kw_only=True):
    total: int | UnsetType = UNSET
    buckets: (
        Annotated[dict[str, int], Meta(description="Bucket start (epoch ms) -> count.")] | UnsetType
    ) = UNSET


class ProfileMembership(msgspec.Struct, kw_only=True):
    since: str | UnsetType = UNSET


class Profile(msgspec.Struct):
    canonicalId: Annotated[str, Meta(extra_json_schema={"example": "p1"})]
    identifiers: Annotated[
        list[str],
        Meta(extra_json_schema={"example": ["anon:anon-456", "email:a@b.c", "user:u123"]}),
    ]
    traits: dict[str, ProfileTrait]
    tombstones: Annotated[
        dict[str, ProfileTombstone],
        Meta(description="Traits set to null, with the time of the deletion."),
    ]
    firstSeen: str | None
    lastSeen: str | None
    createdAt: str | None
    mergedFrom: Annotated[list[str], Meta(description="Canonical ids merged into this profile.")]
    counters: dict[str, ProfileCounter]
    segments: Annotated[
        dict[str, ProfileMembership],
        Meta(
            description="Segments the profile is a member of, with the time it entered.",
            extra_json_schema={"example": {"pro_plan": {"since": "2025-10-04T11:00:30.000Z"}}},
        ),
    ]


class ProfileList(msgspec.Struct):
    profiles: list[Profile]
    cursor: Annotated[
        str | None, Meta(description="Pass as ?cursor= for the next page; null after the last.")
    ]


# -- replay ---------------------------------------------------------------------------------

ReplaySource = Literal["dropped", "dead"]
ReplaySince = Annotated[
    Annotated[str, Meta(pattern=DATE_TIME, extra_json_schema={"format": "date-time"})]
    | Annotated[str, Meta(pattern=SINCE_DURATION)]
    | None,
    Meta(
        description=(
            "Only records from this time on: an RFC 3339 time, or a duration back from"
            " now (30m, 24h, 7d). Absent or null: all."
        )
    ),
]
ReplayEventIds = Annotated[
    Annotated[list[str], Meta(max_length=MAX_EVENT_IDS)] | None,
    Meta(description="Only the records of these events. Absent, null or empty: all."),
]


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which records of cdp:events:dropped or cdp:events:dead to publish again."""

    json_schema_extra: ClassVar[dict[str, Any]] = {
        "example": {"source": "dropped", "since": "24h", "dryRun": True}
    }

    source: Annotated[
        ReplaySource,
        Meta(description="cdp:events:dropped (too late) or cdp:events:dead (the apply failed)."),
    ]
    since: ReplaySince | UnsetType = UNSET
    eventIds: ReplayEventIds | UnsetType = UNSET
    dryRun: Annotated[bool, Meta(description="List what would be replayed; change nothing.")] = (
        False
    )


class ReplayRecord(msgspec.Struct):
    recordId: str
    eventId: str | None
    action: Literal["replayed", "would replay", "already replayed", "skipped"]
    reason: Annotated[
        str,
        Meta(
            description=(
                "Why it was dropped or parked; for a skipped record, why it cannot be replayed."
            )
        ),
    ]
    partition: Annotated[
        int | None, Meta(description="The partition stream it was (or would be) published to.")
    ]


class ReplayReport(msgspec.Struct):
    source: ReplaySource
    dryRun: bool
    scanned: Annotated[int, Meta(description="Records read (from `since` on).")]
    selected: Annotated[
        int,
        Meta(description="Of those, the records of the chosen eventIds (all without eventIds)."),
    ]
    replayed: Annotated[int, Meta(description="Published again (for a dry run: would be).")]
    alreadyReplayed: Annotated[
        int, Meta(description="Replayed by an earlier run: never published twice.")
    ]
    skipped: Annotated[
        int, Meta(description="Records holding no decodable event: they cannot be replayed.")
    ]
    records: Annotated[
        list[ReplayRecord],
        Meta(description="The first 1,000 selected records and what happened to each."),
    ]
    truncated: Annotated[bool, Meta(description="More records were selected than `records` lists.")]


# -- what the document is generated from ---------------------------------------------------

# The named schemas that are not Structs (their names are components.schemas keys).
NAMED: dict[str, Any] = {
    "EventTime": EventTime,
    "DateTime": DateTime,
    "Duration": Duration,
    "Usable": Usable,
    "CallId": CallId,
    "UsableCallId": UsableCallId,
    "PresentCallId": PresentCallId,
    "Rule": Rule,
}

# Every Struct of a body the document describes (each Struct they hold is added too).
BASE_MODELS: tuple[type[msgspec.Struct], ...] = (
    IngestEvent,
    Accepted,
    Error,
    Status,
    SegmentDefinition,
    Segment,
    SegmentList,
    Members,
    RuleAll,
    RuleAny,
    RuleNot,
    RuleTraitExists,
    RuleTraitEquals,
    RuleTraitIn,
    RuleTraitOrder,
    RuleCount,
    RuleInactive,
    RuleReturned,
    WebhookCreate,
    Webhook,
    WebhookList,
    SegmentBatch,
    SegmentSuccess,
    Rejected,
    SegmentError,
    CallCommon,
    IdentifyCall,
    TrackCall,
    AliasCall,
    PageCall,
    ScreenCall,
    GroupCall,
    Job,
    Profile,
    ProfileList,
    ReplayRequest,
    ReplayReport,
)
