"""The typed keys under which the app keeps what its handlers share."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from cdp.api.publisher import Publisher
from cdp.clock import Clock
from cdp.connect import Client
from cdp.logs import TroubleLog
from cdp.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[Client] = web.AppKey("redis")
PUBLISHER = web.AppKey("publisher", Publisher)
CLOCK = web.AppKey("clock", Clock)
TROUBLE = web.AppKey("trouble", TroubleLog)
PROCESS_METRICS = web.AppKey("process_metrics", CollectorRegistry)  # this process's own
LATENCY = web.AppKey("latency", Histogram)  # cdp_http_request_duration_seconds
