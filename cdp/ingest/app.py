"""The aiohttp application: ``POST /cdp/ingest``, health, metrics and the OpenAPI document.

``create_app(settings)`` builds it; the Redis client, the publisher and the clock live
in the app (``cleanup_ctx``). A request is answered 202 only after its XADD returned;
a client mistake is a 4xx whose message names the field and the rule; Redis being
unreachable is a 503 with Retry-After; nothing a client sends can cause a 500.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cdp.clock import make_clock
from cdp.errors import EventRejected
from cdp.events import decode_ingest
from cdp.ingest.admin import add_admin_routes
from cdp.ingest.appkeys import CLOCK, PUBLISHER, REDIS, SETTINGS
from cdp.ingest.erasure import add_erasure_routes
from cdp.ingest.profiles_api import add_profile_routes
from cdp.ingest.publisher import Publisher
from cdp.ingest.tracking import add_tracking_routes, segment_error
from cdp.metrics import read_metrics, render_prometheus
from cdp.settings import Settings

log = structlog.get_logger("cdp.api")


OPENAPI_PATH = Path(__file__).with_name("openapi.json")
RETRY_AFTER_S = "1"


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"status": "error", "message": message}, status=status, headers=headers or None
    )


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure as a JSON answer: ours ``{status, message}``, Segment's on /v1."""
    shape = segment_error if request.path.startswith("/v1/") else _error_for
    try:
        return await handler(request)
    except EventRejected as exc:
        return shape(exc, exc.status, str(exc))
    except RedisError as exc:
        log.warning("redis unavailable", path=request.path, error=str(exc))
        response = shape(exc, 503, "the event store is unavailable; retry shortly")
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    except RequestPayloadError as exc:  # e.g. a body that is not the gzip it claims
        return shape(exc, 400, f"the body could not be read: {exc}")
    except web.HTTPRequestEntityTooLarge as exc:
        return shape(exc, 413, f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            response = shape(exc, exc.status, exc.reason)
            for header in ("Allow", "Retry-After"):
                if header in exc.headers:
                    response.headers[header] = exc.headers[header]
            return response
        raise


def _error_for(exc: Exception, status: int, message: str) -> web.Response:
    return _error(status, message)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise EventRejected.too_large(request.content_length, limit)
    body = await request.read()
    if len(body) > limit:
        raise EventRejected.too_large(len(body), limit)
    return body


async def ingest(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await _read_body(request, settings.max_event_bytes)
    event = decode_ingest(
        body,
        now_ms=await request.app[CLOCK].now_ms(),
        max_event_bytes=settings.max_event_bytes,
        max_future_skew_ms=settings.max_future_skew_ms,
        blocked=settings.blocked_values,
    )
    await request.app[PUBLISHER].publish(event)
    return web.json_response({"status": "accepted", "eventId": event.eventId}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[REDIS].ping()
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    values = await read_metrics(request.app[REDIS])
    return web.Response(
        text=render_prometheus(values),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(json.loads(OPENAPI_PATH.read_text()))


def create_app(settings: Settings, redis: Redis | None = None) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=max(settings.max_event_bytes, 1 << 20)
    )
    app[SETTINGS] = settings

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        client = redis or Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10
        )
        app[REDIS] = client
        app[CLOCK] = make_clock(settings.clock, client)
        app[PUBLISHER] = Publisher(client, settings.partitions)
        yield
        await app[PUBLISHER].close()
        if redis is None:
            await client.aclose()

    app.cleanup_ctx.append(redis_ctx)
    app.router.add_post("/cdp/ingest", ingest)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    add_admin_routes(app)
    add_profile_routes(app)
    add_erasure_routes(app)
    add_tracking_routes(app)
    return app
