"""The exceptions of the project, one root so callers can catch everything of ours.

Every exception ``cdp`` and ``workers`` raise on purpose descends from ``CdpError``;
most are defined here, the few that belong to one module next to it (named in
parentheses). tests/unit/test_errors.py checks that this tree is complete and true.

CdpError
├── SettingsError        a configuration value is wrong (the CLI exits 2 with its message)
├── EventRejected        a client sent something we do not accept (HTTP ``status``, 400)
│   ├── EventTooLarge         ... because it is too big (HTTP 413)
│   ├── BodyTimeout           ... because its body did not arrive in time (HTTP 408)
│   ├── UnsupportedEncoding   ... in a Content-Encoding we do not inflate (HTTP 415)
│   ├── InvalidIdentifier     ... a malformed identifier or canonical id (HTTP 400, CLI exit 2)
│   ├── InvalidSubscription   ... a webhook subscription that is not valid (HTTP 400)
│   ├── CallRejected          ... a Segment-spec call (cdp.api.tracking_spec; HTTP 400)
│   ├── ReplayRejected        ... a replay request that is not valid (cdp.replay; HTTP 400)
│   ├── Unauthorized          ... without the admin token (the API's own; HTTP 401)
│   ├── NotFound              ... naming nothing that exists (the API's own; HTTP 404)
│   └── Conflict              ... clashing with the current state (the API's own; HTTP 409)
├── RuleError            a segment rule or definition is not valid (cdp.segments.rules)
├── ScriptError          a Lua script disagrees with its -N name or header (cdp.scripts.loader)
├── MergeError           a merge into itself, or merge pointers that do not end (cdp.merge)
├── ClientGone           the client closed the connection before its body was complete
├── OutcomeUnknown       Redis did not answer a round trip that was sent (HTTP 504)
├── NotReplicated        stored by the primary, not by ingest-min-replicas replicas (HTTP 503)
├── PartlyStored         a request spanning partitions, stored for some only (a cluster; HTTP 500)
├── ProfileNotFound      no profile answers to a well-formed identifier (HTTP 404, CLI exit 1)
├── RedisServerError     the embedded redis-server cannot start (the CLI exits 2)
├── ErasureStuck         an erasure step cannot settle (the sweeper tries it again)
├── ProtocolBusy         an event not resolved in a few rounds (cdp.pipeline.profile_apply)
├── BenchError           ``cdp bench`` cannot measure (the CLI exits 2)
├── SchemaError          the models cannot make the OpenAPI document (cdp.api.openapi)
└── ChaosError           ``cdp chaos`` cannot run its own stack (the CLI exits 2)

Errors of Redis (``redis.exceptions``), of the HTTP client and of the operating system
pass through as they are; the API's handlers and the CLI map them.
"""

from __future__ import annotations


class CdpError(Exception):
    """Root of every error this package raises on purpose."""


class SettingsError(CdpError):
    """A configuration value is invalid; the message names the key."""


class EventRejected(CdpError):
    """A client's input failed validation; the message names the field and the rule."""

    status = 400

    @staticmethod
    def too_large(size: int, limit: int) -> EventTooLarge:
        return EventTooLarge(f"body is {size} bytes; the limit is {limit} bytes")


class EventTooLarge(EventRejected):
    status = 413


class BodyTimeout(EventRejected):
    status = 408


class UnsupportedEncoding(EventRejected):
    status = 415


class InvalidIdentifier(EventRejected):
    """Not a profile identifier: neither ``user:``/``anon:``/``email:`` with a value nor a
    canonical id ``p<N>``. Malformed input, never a ProfileNotFound."""


class InvalidSubscription(EventRejected):
    """A webhook subscription body that is not valid; the message says what is wrong."""


class ClientGone(CdpError):
    """The client closed its connection mid-body: nobody is left to answer."""


class OutcomeUnknown(CdpError):
    """A publish was sent but Redis did not answer: it may or may not have stored it.

    The API answers 504 (not 503, which promises nothing was stored), so a client
    retries only with the same eventId/messageId, which dedup makes harmless.
    """


class NotReplicated(CdpError):
    """The primary stored the events but fewer than ``ingest-min-replicas`` replicas
    confirmed them within ``ingest-replica-timeout``: the API answers 503, and a retry
    with the same eventId/messageId is deduplicated."""


class PartlyStored(CdpError):
    """On a Redis Cluster a request's events go out as one call per partition (each
    call's keys are one slot), so a request spanning partitions can be stored for some
    partitions and refused for others (one master out of memory, or failing over).
    The API answers 500 (never a 2xx, never the 503 that promises nothing was stored),
    naming the stored events by their position (``stored``): a retry of the whole
    request with the same eventId/messageId stores the rest, the stored ones are
    deduplicated."""

    def __init__(self, message: str, stored: list[int]) -> None:
        super().__init__(message)
        self.stored = stored  # positions, in the request, of the events stored


class ProfileNotFound(CdpError):
    """No profile is known under this well-formed identifier or canonical id (a blocked
    placeholder value such as ``user:null`` included: no profile ever answers to one)."""


class RedisServerError(CdpError):
    """The embedded redis-server cannot start: no binary, its port taken, it exited or
    did not answer."""


class ErasureStuck(CdpError):
    """An erasure job's step could not settle (counters kept appearing, or survivors
    kept changing): the job stays open, the sweeper tries it again later."""


class BenchError(CdpError):
    """``cdp bench`` cannot measure: a flag out of range, the API or Redis unreachable,
    the apply script failing."""


class ChaosError(CdpError):
    """``cdp chaos`` cannot run: its own API did not start, an unknown fault."""
