"""The typed keys under which the app keeps what its handlers share, and the keys under
which a request carries what its handler learnt for the errors middleware."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from cdp.api.publisher import Publisher
from cdp.api.tap import DebuggerTap
from cdp.clock import Clock
from cdp.connect import Client
from cdp.logs import TroubleLog
from cdp.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[Client] = web.AppKey("redis")
PUBLISHER = web.AppKey("publisher", Publisher)
CLOCK = web.AppKey("clock", Clock)
TAP = web.AppKey("tap", DebuggerTap)  # the console's debugger's copies
TROUBLE = web.AppKey("trouble", TroubleLog)
PROCESS_METRICS = web.AppKey("process_metrics", CollectorRegistry)  # this process's own
LATENCY = web.AppKey("latency", Histogram)  # cdp_http_request_duration_seconds


def _request_key(name: str, kind: type) -> Any:
    """A typed request key from aiohttp 3.14 on (a string key warns there), a string before."""
    return web.RequestKey(name, kind) if hasattr(web, "RequestKey") else name


# What a refused request's record in cdp:rejections shows (cdp.api.rejected).
BODY = _request_key("body", bytes)  # the body read_body read
SOURCE = _request_key("source", str)  # the source of the request's write key
