"""The exceptions of the package, one root so callers can catch everything of ours.

CdpError
├── SettingsError      a configuration value is wrong (the CLI exits with its message)
├── EventRejected      a client sent something we do not accept (HTTP 4xx at ingest)
│   ├── EventTooLarge  ... because it is too big (HTTP 413)
│   ├── BodyTimeout    ... because its body did not arrive in time (HTTP 408)
│   └── UnsupportedEncoding  ... in a Content-Encoding we do not inflate (HTTP 415)
├── ClientGone         the client closed the connection before its body was complete
├── OutcomeUnknown     Redis did not answer a round trip that was sent (HTTP 504)
├── LeaseLost          a worker applied to a partition it no longer owns (it stops)
└── ProfileNotFound    no profile answers to an identifier
"""

from __future__ import annotations


class CdpError(Exception):
    """Root of every error this package raises on purpose."""


class SettingsError(CdpError):
    """A configuration value is invalid; the message names the key."""


class EventRejected(CdpError):
    """An event failed validation; the message names the field and the rule."""

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


class ClientGone(CdpError):
    """The client closed its connection mid-body: nobody is left to answer."""


class OutcomeUnknown(CdpError):
    """A publish was sent but Redis did not answer: it may or may not have stored it.

    The API answers 504 (not 503, which promises nothing was stored), so a client
    retries only with the same eventId/messageId, which dedup makes harmless.
    """


class LeaseLost(CdpError):
    """The partition's lease belongs to another worker now."""


class ProfileNotFound(CdpError):
    """No profile is known under this identifier or canonical id."""
