"""A segment definition tried before it is stored: is it valid, and whom would it take?

``preview(redis, settings, body, now_ms)`` validates a ``PUT /cdp/segments/{name}``
body plus its ``name`` with ``parse_definition``; an invalid one is answered with
``errors``: ``[{"field", "message"}]``, the field being the path of the offending node
as ``RuleError.path`` names it without its leading ``$.`` (``name``, ``description``,
``rule.all[1].count.within``; empty for the body as a whole). A valid one is evaluated
now over the live profiles (``cdp:profiles``, in canonical-number order, at most
``PREVIEW_CAP`` of them) exactly as the engine evaluates it: ``profile_view`` of
``READ_CHUNK`` profiles per pipelined call (one per profile on a cluster), each
profile at ``max(now, evaluatedMs)``, the definition's compiled rule. Nothing is
written.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cdp import keys
from cdp.connect import Client, is_cluster
from cdp.scripts import Scripts
from cdp.segments.definitions import Segment, parse_definition
from cdp.segments.engine import READ_CHUNK, parse_view
from cdp.segments.rules import RuleError, rule_reads
from cdp.settings import Settings
from cdp.streams import text

PREVIEW_CAP = 10_000  # live profiles evaluated at most per preview


class FieldError(msgspec.Struct):
    field: str
    message: str


class PreviewInvalid(msgspec.Struct):
    valid: bool  # False
    errors: list[FieldError]


class PreviewCount(msgspec.Struct):
    valid: bool  # True
    matches: int
    scanned: int
    total: int
    capped: bool


def field_errors(exc: RuleError) -> list[FieldError]:
    """``exc`` as the console's errors list: the offending node's path, what is wrong."""
    path = exc.path
    message = str(exc)
    if message.startswith(path + ": "):
        message = message[len(path) + 2 :]
    elif path == "name":
        message = message.partition(": ")[2] or message
    return [FieldError(path.removeprefix("$").removeprefix("."), message)]


def parse_preview(body: Any) -> Segment:
    """The definition of a preview body (RuleError when it is not valid)."""
    if not isinstance(body, dict):
        raise RuleError('$: expected {"name": "...", "rule": {...}, "description": "..."}')
    name = body.get("name")
    if not isinstance(name, str):
        raise RuleError("name: expected a string", path="name")
    return parse_definition(name, {k: v for k, v in body.items() if k != "name"})


async def preview(
    redis: Client, settings: Settings, body: Any, now_ms: int
) -> PreviewInvalid | PreviewCount:
    try:
        segment = parse_preview(body)
    except RuleError as exc:
        return PreviewInvalid(False, field_errors(exc))
    except RecursionError:
        return PreviewInvalid(False, [FieldError("rule", "the rule is nested too deeply")])
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.PROFILES)
        pipe.zrange(keys.PROFILES, 0, PREVIEW_CAP - 1)
        total, raw_ids = await pipe.execute()
    cids = [text(c) for c in raw_ids]
    reads = rule_reads(segment.rule)
    counters = reads.counters if reads.counters is not None else frozenset()
    view = Scripts(redis).profile_view
    cluster = is_cluster(redis)
    matches = scanned = 0
    for start in range(0, len(cids), READ_CHUNK):
        chunk = cids[start : start + READ_CHUNK]
        calls = [[cid] for cid in chunk] if cluster else [chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for call in calls:
                await view.queue(pipe, call, traits=reads.traits, counters=counters)
            replies = await pipe.execute()
        rows = [row for reply in replies for row in view.decode(reply)]
        for cid, row in zip(chunk, rows, strict=True):
            snap = parse_view(cid, row, settings.counter_bucket_ms)
            if snap is None:  # merged away or erased since the list was read
                continue
            scanned += 1
            matches += segment.check(snap.view, snap.evaluation_ms(now_ms))[0]
    return PreviewCount(True, matches, scanned, int(total), len(cids) < int(total))
