"""What the routes share to read a request and to refuse one.

- ``json_body``: the one JSON body reader. It reads through ``read_body`` (the route's
  size limit, Content-Encoding, ``body-timeout``) and refuses a body that is not JSON
  with a 400 naming the reason;
- ``int_param``: a whole-number query parameter within bounds (cursors, page sizes);
- the API's own refusals, ``NotFound`` (404) and ``Conflict`` (409), next to those of
  ``cdp.errors``. A handler raises them; the errors middleware (``cdp.api.app``) answers
  each ``EventRejected`` with its status and message (``cdp.api.auth`` has the 401).
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
from aiohttp import web

from cdp.api.body import read_body
from cdp.errors import EventRejected

_decoder = msgspec.json.Decoder()
# Admin routes (segment definitions, webhooks, replay...) take bodies up to this.
ADMIN_BODY_LIMIT = 1 << 20
# The largest page a paginated admin route serves.
PAGE_MAX = 1000
# Retry-After of a 5xx that a retry (with the same ids) may cure, in seconds.
RETRY_AFTER_S = "1"
# A whole number in a query string (cursors, limits); also in the OpenAPI document.
WHOLE_NUMBER = re.compile(r"^[0-9]{1,18}$")


class NotFound(EventRejected):
    status = 404


class Conflict(EventRejected):
    status = 409


async def json_body(
    request: web.Request, limit: int = ADMIN_BODY_LIMIT, *, strict: bool = False
) -> Any:
    """The request's body as JSON, or EventRejected (400) saying why it is not.

    Admin routes (the default): any JSON value, an empty body being ``null`` (each
    route then says what it expected). ``strict``, for the Segment-compatible routes:
    the body must be a JSON object, NaN, Infinity and numbers past a float's range are
    refused, and an empty body is not JSON.
    """
    raw = await read_body(request, limit)
    if strict:
        try:  # msgspec's strict JSON: what it takes, json.loads reads the same way
            body = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            pass  # json.loads below says why, or takes it (a lone surrogate's escape)
        else:
            if not isinstance(body, dict):
                raise EventRejected("body must be a JSON object")
            return body
    try:
        if strict:
            body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        else:
            body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventRejected(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise EventRejected("body is nested too deeply") from None
    if strict and not isinstance(body, dict):
        raise EventRejected("body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def int_param(request: web.Request, name: str, default: int, low: int, high: int | None) -> int:
    """Query parameter ``name`` as a whole number in [low, high], ``default`` if absent."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw.removeprefix("-")):  # not int(): it takes "+7", "٧"...
        raise EventRejected(f"query parameter {name!r} must be a whole number")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise EventRejected(f"query parameter {name!r} must be {bound}")
    return value
