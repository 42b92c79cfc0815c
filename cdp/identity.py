"""Typed, normalised identifiers: the vocabulary of the identity graph.

An event names a person by ``userId``, ``anonymousId`` and/or ``email``; the graph
knows them as ``user:<userId>``, ``anon:<anonymousId>`` and ``email:<lower-cased,
trimmed email>``. Values that SDKs send when they have nothing (``null``,
``undefined``, ``0``, ``anonymous``...) are blocked: they would otherwise glue thousands
of strangers into one profile. The Lua apply script receives identifiers already
normalised by ``typed_identifiers``.
"""

from __future__ import annotations

import zlib

BLOCKED_VALUES = frozenset(
    {"", "null", "undefined", "0", "-1", "anonymous", "unknown", "none", "nil", "[object object]"}
)


def is_blocked(value: str, blocked: frozenset[str] = BLOCKED_VALUES) -> bool:
    return value.strip().lower() in blocked


def typed_identifiers(
    user_id: str | None,
    anonymous_id: str | None,
    email: str | None,
    blocked: frozenset[str] = BLOCKED_VALUES,
) -> list[str]:
    """The event's usable identifiers, user first, then email, then anon.

    The order matters: the apply script takes the profile of the first as the
    event's own, so an event applies to the profile of its userId when it has one.
    """
    out = []
    if user_id is not None and not is_blocked(user_id, blocked):
        out.append("user:" + user_id.strip())
    if email is not None and not is_blocked(email, blocked):
        out.append("email:" + email.strip().lower())
    if anonymous_id is not None and not is_blocked(anonymous_id, blocked):
        out.append("anon:" + anonymous_id.strip())
    return out


def routing_id(
    user_id: str | None,
    anonymous_id: str | None,
    email: str | None,
    blocked: frozenset[str] = BLOCKED_VALUES,
) -> str:
    """userId, else anonymousId, else email (DESIGN.md), as a typed identifier.

    Placeholder values are skipped, or every ``userId: "null"`` would land on one
    partition, and so on one worker.
    """
    if user_id is not None and not is_blocked(user_id, blocked):
        return "user:" + user_id.strip()
    if anonymous_id is not None and not is_blocked(anonymous_id, blocked):
        return "anon:" + anonymous_id.strip()
    if email is not None and not is_blocked(email, blocked):
        return "email:" + email.strip().lower()
    return "user:" + (user_id or anonymous_id or email or "").strip()


def partition_of(routing: str, partitions: int) -> int:
    """Stable across processes and restarts (crc32, never Python's salted hash())."""
    return zlib.crc32(routing.encode()) % partitions
