"""The bodies of the console's JSON routes (``/cdp/console/*``), as the OpenAPI document
describes them (``cdp.api.openapi`` generates their schemas; ``cdp.api.schemas.MODELS``
lists the top ones).

The debugger's, the rejections' and the preview's answers are the Structs their modules
encode (``cdp.debugger``, ``cdp.rejections``, ``cdp.segments.preview``); the others are
dicts built by ``cdp.explorer``, ``cdp.health`` and ``cdp.api.console``, described here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from cdp.api.schemas import Profile
from cdp.debugger import DebuggerPage
from cdp.rejections import ENTRY_ID, RejectionPage
from cdp.segments.preview import PREVIEW_CAP, FieldError, PreviewCount, PreviewInvalid

EntryId = Annotated[str, Meta(pattern=ENTRY_ID.pattern)]
Ms = Annotated[int, Meta(description="Epoch milliseconds.")]


class StreamRecord(msgspec.Struct):
    """A stream entry's fields (a field holding a JSON object or array decoded) and its
    entry id."""

    entryId: EntryId
    json_schema_extra: ClassVar[dict[str, Any]] = {"additionalProperties": True}


class TraitCell(msgspec.Struct):
    value: Annotated[Any, Meta(description="Any JSON value but null.")]
    ts: Ms
    eventId: str


class TombstoneCell(msgspec.Struct):
    ts: Ms
    eventId: str


Bucket = Annotated[list[int], Meta(min_length=2, max_length=2)]


class ConsoleProfile(msgspec.Struct):
    """A profile as the console's explorer shows it."""

    profile: Annotated[Profile, Meta(description="GET /cdp/profiles/{id}'s document.")]
    traits: dict[str, TraitCell]
    tombstones: dict[str, TombstoneCell]
    counters: Annotated[
        dict[str, list[Bucket]],
        Meta(description="Event name -> [[bucket start ms, count], ...], oldest first."),
    ]
    merges: Annotated[
        list[StreamRecord],
        Meta(
            description="Records of cdp:merges naming the profile or one merged into it, "
            "newest first, among the newest 5,000 records."
        ),
    ]
    segmentEvents: Annotated[
        list[StreamRecord],
        Meta(
            description="Its records of cdp:segment-events, newest first, among the newest 5,000."
        ),
    ]


class SegmentInvalid(msgspec.Struct):
    """An invalid segment definition: the message, and each error at its field."""

    status: Annotated[str, Meta(extra_json_schema={"enum": ["error"]})]
    message: str
    errors: Annotated[list[FieldError], Meta(min_length=1)]


class WebhookState(msgspec.Struct):
    cursor: str | None
    attempts: int
    nextAt: Ms
    delivered: int
    retries: int
    dead: int
    lastError: str | None


class ConsoleWebhook(msgspec.Struct):
    id: str
    url: str
    segments: Annotated[list[str] | None, Meta(description="null: every segment.")]
    state: WebhookState


class ConsoleWebhooks(msgspec.Struct):
    """The subscriptions with their delivery state (no secrets), and the dead letters."""

    webhooks: list[ConsoleWebhook]
    dead: Annotated[
        list[StreamRecord],
        Meta(max_length=50, description="The newest records of cdp:webhooks:dead."),
    ]


class MetricsSample(msgspec.Struct, kw_only=True):
    """One sample of cdp:metrics:history (totals since the deployment began)."""

    at: Ms | msgspec.UnsetType = msgspec.UNSET
    counters: dict[str, int] | msgspec.UnsetType = msgspec.UNSET
    segments: (
        Annotated[
            dict[str, dict[str, int]], Meta(description='Segment -> {"enter": n, "exit": n}.')
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class HealthWorker(msgspec.Struct):
    id: str
    buffered: int
    partitions: list[int]


class HealthPartition(msgspec.Struct):
    partition: int
    lag: int
    pending: int
    holder: str | None


class HealthStreams(msgspec.Struct):
    dropped: int
    dead: int
    webhooksDead: int
    rejections: int


class ConsoleHealth(msgspec.Struct):
    """The pipeline's health: counters, workers and their partitions, lag, the streams of
    what went wrong, and the last hour of samples."""

    now: Annotated[int, Meta(description="The server's wall clock, epoch ms.")]
    counters: Annotated[
        dict[str, int], Meta(description="Every counter of /metrics, summed over the partitions.")
    ]
    buffered: int
    workers: list[HealthWorker]
    partitions: list[HealthPartition]
    streams: HealthStreams
    history: Annotated[
        list[MetricsSample], Meta(description="The last hour of samples, oldest first.")
    ]


CONSOLE_MODELS: tuple[type[msgspec.Struct], ...] = (
    DebuggerPage,
    RejectionPage,
    ConsoleProfile,
    PreviewCount,
    PreviewInvalid,
    SegmentInvalid,
    ConsoleWebhooks,
    ConsoleHealth,
)

__all__ = ["CONSOLE_MODELS", "PREVIEW_CAP"]
