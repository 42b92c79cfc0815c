"""Recording the ingest routes' 4xx answers in ``cdp:rejections`` (``cdp.rejections``).

``errors_middleware`` (``cdp.api.app``) hands every answer with a 4xx status to
``RejectionRecorder.note``, which keeps those of ``POST /cdp/ingest`` and of the
``/v1/*`` routes (not their CORS preflights): the message the client got, the body as
``read_body`` read it (``BODY``, stashed on the request), the write key's source when
it was known (``SOURCE``, stashed by the tracking routes, else the HTTP Basic key's),
never the key itself. A batch's calls refused one by one (200 with ``rejected[]``)
come through ``note_calls``: one entry per call (its JSON as the body), all in one
pipeline. The XADDs run in a task of their own: the answer never waits for them, and a
failure is logged (rate-limited) and forgotten. A 2xx costs one comparison.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from aiohttp import web

from cdp.api.appkeys import BODY, REDIS, SETTINGS, SOURCE, TROUBLE
from cdp.clock import wall_ms
from cdp.rejections import record_rejections, rejection_fields


class RejectionRecorder:
    """Writes refusals in the background; holds its tasks until they end."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def note(self, request: web.Request, response: web.StreamResponse) -> None:
        """Record a refused request of an ingest route; never raises (best-effort)."""
        try:
            self._note(request, response)
        except Exception as exc:  # a record is never worth an answer
            request.app[TROUBLE].note("a refusal could not be recorded", error=repr(exc))

    def note_calls(self, request: web.Request, refused: list[tuple[int, str, Any]]) -> None:
        """The calls of a batch refused one by one: (status, reason, the call as sent);
        never raises (best-effort)."""
        try:
            self._note_calls(request, refused)
        except Exception as exc:
            request.app[TROUBLE].note("a refusal could not be recorded", error=repr(exc))

    def _note(self, request: web.Request, response: web.StreamResponse) -> None:
        if not _is_ingest(request):
            return
        fields = rejection_fields(
            at=wall_ms(),
            method=request.method,
            route=request.path,
            status=response.status,
            reason=_reason(response),
            source=request.get(SOURCE) or _basic_source(request),
            body=request.get(BODY) or b"",
        )
        self._spawn(request.app, [fields])

    def _note_calls(self, request: web.Request, refused: list[tuple[int, str, Any]]) -> None:
        at = wall_ms()
        entries = [
            rejection_fields(
                at=at,
                method=request.method,
                route=request.path,
                status=status,
                reason=reason,
                source=request.get(SOURCE),
                body=json.dumps(call, ensure_ascii=False).encode("utf-8", "replace"),
            )
            for status, reason, call in refused
        ]
        if entries:
            self._spawn(request.app, entries)

    def _spawn(self, app: web.Application, entries: list[dict[Any, Any]]) -> None:
        task = asyncio.create_task(self._record(app, entries))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _record(self, app: web.Application, entries: list[dict[Any, Any]]) -> None:
        try:
            await record_rejections(app[REDIS], entries, app[SETTINGS].rejections_maxlen)
        except Exception as exc:  # best-effort: never more than a log line
            app[TROUBLE].note("a refusal could not be recorded", error=str(exc))


RECORDER = web.AppKey("rejection_recorder", RejectionRecorder)


def _is_ingest(request: web.Request) -> bool:
    if request.path.startswith("/v1/"):
        return request.method != "OPTIONS"
    return request.path == "/cdp/ingest" and request.method == "POST"


def _reason(response: web.StreamResponse) -> str:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return ""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        return ""
    return message if isinstance(message, str) else ""


def _basic_source(request: web.Request) -> str | None:
    """The source of the HTTP Basic write key, when it is a known one."""
    from cdp.api.tracking import write_keys  # the tracking routes import this module

    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        key = base64.b64decode(header[6:].strip()).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return write_keys(request.app[SETTINGS].write_keys).get(key)
