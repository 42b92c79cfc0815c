"""Segment-compatible tracking routes: point an SDK's host here and nothing else changes.

``POST /v1/{identify,track,alias,page,screen,group}`` (and analytics.js' short
``/v1/{i,t,a,p,s,g}``), ``POST /v1/batch`` (``/v1/b``) and ``POST /v1/import``
(historical backfill: never dropped as late, and it emits no segment transitions for
the past). Auth is the write key: HTTP Basic with the key as user name, or
``writeKey`` in the body (analytics.js sends ``text/plain`` bodies that way). Bodies
may be gzip-encoded; browsers get CORS headers and preflight answers.

Answers are Segment's: ``200 {"success": true}``; ``400 {"code", "message"}``; a
batch accepts its valid calls and lists the rejected ones (200 even when none is valid,
as Segment answers; 400 only for a request that is not a batch of JSON objects); 413
past 32 KB per call or 500 KB per request; 401 for an unknown write key. Late events
are always accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgspec
from aiohttp import web

from cdp.api.appkeys import CLOCK, PUBLISHER, SETTINGS, SOURCE
from cdp.api.rejected import RECORDER
from cdp.api.requests import RETRY_AFTER_S, json_body
from cdp.api.tracking_spec import SHORT, TYPES, CallRejected, _time, to_stream_event
from cdp.errors import PartlyStored
from cdp.settings import Settings

_size_encoder = msgspec.json.Encoder()
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_ITEMS = 2500
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}


def _answer(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=CORS)


_SUCCESS = json.dumps({"success": True}).encode()


def _success() -> web.Response:
    """``_answer({"success": True})``, its bytes encoded once."""
    return web.Response(
        body=_SUCCESS, content_type="application/json", charset="utf-8", headers=CORS
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return _answer({"code": code, "message": message}, status)


def segment_error(exc: Exception, status: int, message: str) -> web.Response:
    """An error on a /v1 route, in Segment's shape, with CORS so browsers can read it."""
    code = getattr(exc, "code", None) or {
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "request_too_large",
        415: "unsupported_encoding",
        503: "unavailable",
        504: "outcome_unknown",
    }.get(status, "invalid_request")
    return _error(status, code, message)


def _partly_stored(exc: PartlyStored, stored: list[int]) -> web.Response:
    """500: the calls at ``stored`` (indices in ``batch``) are stored, the others not;
    resending the whole batch with the same messageIds stores only the rest."""
    response = _answer({"code": "partly_stored", "message": str(exc), "stored": stored}, status=500)
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


def write_keys(raw: str) -> dict[str, str]:
    """``"key1=web,key2=ios"`` -> {key: source}; a key without ``=`` names itself."""
    out = {}
    for item in raw.split(","):
        key, _, source = item.strip().partition("=")
        if key:
            out[key] = source or key
    return out


def _source(request: web.Request, body_key: Any) -> str:
    if body_key is not None and not isinstance(body_key, str):
        raise CallRejected("`writeKey` must be a string")
    keys = write_keys(request.app[SETTINGS].write_keys)
    key = None
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            key = base64.b64decode(header[6:].strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise CallRejected(
                "the Authorization header is not valid Basic auth", "unauthorized", 401
            ) from None
    if not key and isinstance(body_key, str):
        key = body_key
    if not keys:
        raise CallRejected(
            "no write keys are configured on this server: set CDP_WRITE_KEYS", "unauthorized", 401
        )
    if not key:
        raise CallRejected(
            "a write key is required: HTTP Basic user name, or `writeKey`", "unauthorized", 401
        )
    if key not in keys:
        raise CallRejected("unknown write key", "unauthorized", 401)
    return keys[key]


def _check_size(call: Any, limit: int) -> None:
    """The call's size as compact UTF-8 JSON (msgspec's, as the stream stores it)."""
    try:
        size = len(_size_encoder.encode(call))
    except UnicodeEncodeError:
        raise CallRejected("a string holds a lone UTF-16 surrogate (cut emoji?)") from None
    if size > limit:
        raise CallRejected(
            f"call is {size} bytes; the limit is {limit} per call", "request_too_large", 413
        )


async def single(request: web.Request) -> web.Response:
    kind = request.path.rsplit("/", 1)[1]  # one route per call type (add_tracking_routes)
    kind = SHORT.get(kind, kind)
    settings = request.app[SETTINGS]
    body: dict[str, Any] = await json_body(request, settings.max_event_bytes, strict=True)
    source = _source(request, body.get("writeKey"))
    request[SOURCE] = source  # for cdp:rejections, should the call be refused
    now = await request.app[CLOCK].now_ms()
    event = _convert(body, kind, now, _time(body.get("sentAt"), "sentAt"), source, None, settings)
    await request.app[PUBLISHER].publish(event)
    return _success()


def _convert(
    call: Any,
    kind: str | None,
    now: int,
    sent_at: int | None,
    source: str,
    mode: str | None,
    settings: Settings,
) -> Any:
    event = to_stream_event(
        call,
        kind,
        received_at=now,
        sent_at=sent_at,
        source=source,
        mode=mode,
        blocked=settings.blocked_values,
    )
    if event.ts > now + settings.max_future_skew_ms:
        raise CallRejected("the call's time is more than max-future-skew ahead of the server")
    return event


async def batch(request: web.Request) -> web.Response:
    return await _batch(request, mode=None)


async def import_batch(request: web.Request) -> web.Response:
    return await _batch(request, mode="import")


async def _batch(request: web.Request, mode: str | None) -> web.Response:
    settings = request.app[SETTINGS]
    body: dict[str, Any] = await json_body(request, MAX_BATCH_BYTES, strict=True)
    source = _source(request, body.get("writeKey"))
    request[SOURCE] = source  # for cdp:rejections, should the call be refused
    calls = body.get("batch")
    if not isinstance(calls, list) or not calls:
        raise CallRejected("`batch` must be a non-empty list of calls")
    if len(calls) > MAX_BATCH_ITEMS:
        raise CallRejected(f"`batch` has {len(calls)} calls; at most {MAX_BATCH_ITEMS}")
    # The shape of the request is all-or-nothing; each call's content is judged alone.
    for index, call in enumerate(calls):
        if not isinstance(call, dict):
            raise CallRejected(f"`batch[{index}]`: each call must be a JSON object")
    for field in ("context", "integrations"):
        if body.get(field) is not None and not isinstance(body[field], dict):
            raise CallRejected(f"`{field}` must be a JSON object")
    shared_context: dict[str, Any] = body.get("context") or {}
    shared_integrations = body.get("integrations")
    now = await request.app[CLOCK].now_ms()
    sent_at = _time(body.get("sentAt"), "sentAt")
    events, rejected, positions = [], [], []
    refused: list[tuple[int, str, Any]] = []  # (status, reason, call as sent)
    for index, call in enumerate(calls):
        try:
            own_context = call.get("context") or {}
            if not isinstance(own_context, dict):
                raise CallRejected("`context` must be a JSON object")
            call = {**call, "context": {**shared_context, **own_context}}
            if shared_integrations is not None and "integrations" not in call:
                call["integrations"] = shared_integrations
            # Sized with the batch's context merged in: that is what gets stored.
            _check_size(call, settings.max_event_bytes)
            events.append(
                _convert(
                    call,
                    None,
                    now,
                    _time(call.get("sentAt"), "sentAt") if call.get("sentAt") else sent_at,
                    source,
                    mode,
                    settings,
                )
            )
            positions.append(index)
        except CallRejected as exc:
            refused.append((exc.status, str(exc), calls[index]))
            message_id = call.get("messageId")
            if not isinstance(message_id, str):
                message_id = None
            rejected.append(
                {"index": index, "messageId": message_id, "code": exc.code, "message": str(exc)}
            )
    if events:
        try:
            await request.app[PUBLISHER].publish_many(events)
        except PartlyStored as exc:  # a cluster: some partitions refused their calls
            return _partly_stored(exc, [positions[i] for i in exc.stored])
    if not rejected:
        return _success()
    _record_refused(request, refused)
    return _answer({"success": True, "rejected": rejected})


def _record_refused(request: web.Request, refused: list[tuple[int, str, Any]]) -> None:
    """A batch's calls refused one by one go to cdp:rejections, as a refused request."""
    if RECORDER in request.app:
        request.app[RECORDER].note_calls(request, refused)


async def preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS)


async def project_settings(request: web.Request) -> web.Response:
    """What analytics.js loads first: where to send, and with which key."""
    key = request.match_info["write_key"]
    if key not in write_keys(request.app[SETTINGS].write_keys):
        return _error(404, "not_found", "unknown write key")
    host = f"{request.host}/v1"
    return _answer(
        {
            "integrations": {
                "Segment.io": {"apiKey": key, "apiHost": host, "protocol": request.scheme}
            },
            "plan": {
                "track": {"__default": {"enabled": True}},
                "identify": {"__default": {"enabled": True}},
            },
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0},
            "legacyVideoPluginsEnabled": False,
            "remotePlugins": [],
        }
    )


def add_tracking_routes(app: web.Application) -> None:
    app.router.add_post("/v1/batch", batch)
    app.router.add_post("/v1/b", batch)
    app.router.add_post("/v1/import", import_batch)
    app.router.add_get("/v1/projects/{write_key}/settings", project_settings)
    for kind in (*TYPES, *SHORT):  # one route each, as the OpenAPI document lists them
        app.router.add_post(f"/v1/{kind}", single)
    app.router.add_route("OPTIONS", r"/v1/{tail:[\s\S]*}", preflight)
