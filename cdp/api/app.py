"""The aiohttp application: its route table, its middlewares, health, metrics, OpenAPI.

``create_app(settings)`` builds it from the route modules of ``cdp.api`` (ingest,
tracking, segments, webhooks, segment_stream, replay, profiles, erasure, console, and
console_site: the console's page and assets); the Redis
client, the publisher, the clock and the debugger's tap (``cdp.api.tap``, its task reads the
watch flag and flushes) live in the app (``cleanup_ctx``);
``cdp/api/server.py`` serves it (bodies are read through ``cdp/api/body.py``, so it
must be served with aiohttp's decompression off). Every request passes through
``errors_middleware`` (here), the only middleware, which first makes ``admin_auth``'s
check (``cdp.api.auth``: the admin token for handlers marked ``@admin``) and times the
request into this process's ``cdp_http_request_duration_seconds`` histogram (labelled
by the route's pattern, method and status; per process, not summed across processes);
a 4xx of an ingest route is recorded in ``cdp:rejections`` (``cdp.api.rejected``).

A request is answered 202 only after its events are stored; a client mistake is a
4xx whose message names the field and the rule; Redis being unreachable is a 503 with
Retry-After; nothing a client sends can cause a 500. Until Redis first answers, the
API serves /healthz, answers 503 elsewhere and logs one line per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from redis.exceptions import RedisError

from cdp.api.appkeys import (
    CLOCK,
    LATENCY,
    PROCESS_METRICS,
    PUBLISHER,
    REDIS,
    SETTINGS,
    TAP,
    TROUBLE,
)
from cdp.api.auth import check_admin_token, is_admin
from cdp.api.console import add_console_routes
from cdp.api.console_site import add_console_site_routes
from cdp.api.erasure import add_erasure_routes
from cdp.api.ingest import add_ingest_routes
from cdp.api.profiles import add_profile_routes
from cdp.api.publisher import Publisher
from cdp.api.rejected import RECORDER, RejectionRecorder
from cdp.api.replay import add_replay_routes
from cdp.api.requests import RETRY_AFTER_S
from cdp.api.segment_stream import add_segment_stream_routes
from cdp.api.segments import add_segment_routes
from cdp.api.tap import DebuggerTap
from cdp.api.tracking import add_tracking_routes, segment_error
from cdp.api.webhooks import add_webhook_routes
from cdp.clock import make_clock
from cdp.connect import Client, guess_cluster, is_cluster, redis_client, wait_for_redis
from cdp.errors import (
    BodyTimeout,
    ClientGone,
    EventRejected,
    NotReplicated,
    OutcomeUnknown,
    PartlyStored,
)
from cdp.logs import TroubleLog
from cdp.metrics import SnapshotCollector, read_snapshot
from cdp.redis_nodes import ping_all
from cdp.scripts import load_scripts
from cdp.settings import Settings

log = structlog.get_logger("cdp.api")


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"status": "error", "message": message}, status=status, headers=headers or None
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Request latency buckets (seconds): ingest answers in ms, exports and backfills longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _latency_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "cdp_http_request_duration_seconds",
        "Time to answer a request in this API process, by route pattern, method, status.",
        ["route", "method", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON answer, timed into the app's latency histogram."""
    start = time.perf_counter()
    status = 500
    try:
        response = await _answer(request, handler)
        status = response.status
        if 400 <= status < 500 and RECORDER in request.app:
            request.app[RECORDER].note(request, response)  # ingest routes' only
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        histogram = request.app.get(LATENCY)
        if histogram is not None:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            histogram.labels(route, request.method, str(status)).observe(
                time.perf_counter() - start
            )


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON answer: ours ``{status, message}``, Segment's on /v1."""
    shape = segment_error if request.path.startswith("/v1/") else _error_for
    try:
        if is_admin(request.match_info.handler):  # admin_auth's check, one layer less
            check_admin_token(request)
        return await handler(request)
    except BodyTimeout as exc:  # a slow-loris body: answer, then hang up on it
        _note(request, "request body too slow; answered 408", path=request.path)
        response = shape(exc, exc.status, str(exc))
        response.force_close()
        with contextlib.suppress(ConnectionError):
            await response.prepare(request)
            await response.write_eof()
        request.protocol.force_close()  # no lingering read of the rest of the body
        return response
    except EventRejected as exc:
        return shape(exc, exc.status, str(exc))
    except ClientGone as exc:  # nobody is left to read the answer; no traceback each time
        _note(request, "client closed the connection mid-body", path=request.path)
        return shape(exc, 400, str(exc))
    except OutcomeUnknown as exc:  # sent, unanswered: stored or not, nobody knows
        _note(request, "redis did not answer; answered 504", error=str(exc))
        response = shape(
            exc,
            504,
            "the event store did not answer in time; the event may have been stored: "
            "retry with the same eventId/messageId (a duplicate is discarded)",
        )
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    except NotReplicated as exc:  # stored by the primary, too few replicas confirmed it
        _note(request, "replicas did not confirm; answered 503", error=str(exc))
        response = shape(exc, 503, str(exc))
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    except PartlyStored as exc:  # a cluster: some partitions stored, others refused
        _note(request, "request partly stored; answered 500", error=str(exc))
        response = shape(exc, 500, str(exc))
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    except RedisError as exc:
        _note(request, "redis unavailable; answered 503", error=str(exc))
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


def _note(request: web.Request, kind: str, **fields: object) -> None:
    """One rate-limited line per kind of trouble (see cdp.logs.TroubleLog)."""
    trouble = request.app.get(TROUBLE)
    if trouble is None:  # an app assembled without create_app (tests)
        log.warning(kind, **fields)
    else:
        trouble.note(kind, **fields)


def _error_for(exc: Exception, status: int, message: str) -> web.Response:
    return _error(status, message)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await ping_all(request.app[REDIS])  # every master of a cluster
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """This process's own metrics, then what every process shares through Redis."""
    snapshot = await read_snapshot(request.app[REDIS], request.app[SETTINGS].partitions)
    shared = CollectorRegistry(auto_describe=False)
    shared.register(SnapshotCollector(snapshot))
    body = generate_latest(request.app[PROCESS_METRICS]) + generate_latest(shared)
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(json.loads(OPENAPI_PATH.read_text()))


# errors_middleware makes admin_auth's check itself (a middleware layer costs every
# request a wrapper), so a refusal of the admin token is answered like any error.
MIDDLEWARES = (errors_middleware,)


async def _found(settings: Settings, client: Client, cluster: bool) -> None:
    """Log when Redis answers and load the scripts on every master; stop the process
    (its supervisor starts it again) when redis-cluster = auto took a Redis that did
    not answer at start for the wrong kind."""
    reached = await wait_for_redis(settings, log)
    if reached is not None and reached.cluster == cluster:
        try:
            await load_scripts(client)
        except RedisError as exc:  # a call loads its script itself on NOSCRIPT
            log.warning("scripts not loaded at start", error=str(exc))
    if reached is not None and reached.cluster != cluster:
        log.error(
            "redis-cluster=auto guessed wrong while redis did not answer; stopping so that "
            "a restart picks the right client (set redis-cluster to yes or no to skip it)",
            cluster=reached.cluster,
        )
        signal.raise_signal(signal.SIGTERM)


def create_app(settings: Settings, redis: Client | None = None) -> web.Application:
    app = web.Application(
        middlewares=MIDDLEWARES, client_max_size=max(settings.max_event_bytes, 1 << 20)
    )
    app[SETTINGS] = settings
    app[TROUBLE] = TroubleLog("cdp.api")
    app[PROCESS_METRICS] = CollectorRegistry(auto_describe=True)
    app[LATENCY] = _latency_histogram(app[PROCESS_METRICS])
    app[RECORDER] = RejectionRecorder()

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        cluster = is_cluster(redis) if redis else await guess_cluster(settings, log)
        client = redis or redis_client(settings, cluster=cluster)
        app[REDIS] = client
        app[CLOCK] = make_clock(settings.clock, client)
        app[PUBLISHER] = Publisher(
            client,
            settings.partitions,
            min_replicas=settings.ingest_min_replicas,
            replica_timeout_ms=settings.ingest_replica_timeout_ms,
        )
        tap = app[PUBLISHER].tap = app[TAP] = DebuggerTap(
            client, settings.debugger_maxlen, app[TROUBLE]
        )
        tapping = asyncio.create_task(tap.run())
        # Serving starts at once (/healthz answers); this only says when Redis does.
        waiting = None if redis else asyncio.create_task(_found(settings, client, cluster))
        yield
        if waiting is not None:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        await app[PUBLISHER].close()
        await tap.close(tapping)  # after the publisher: its last requests are copied
        if redis is None:
            await client.aclose()

    app.cleanup_ctx.append(redis_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    add_ingest_routes(app)  # anyone: the seed's API
    add_tracking_routes(app)  # a write key: Segment's API
    add_segment_routes(app)  # the admin token from here on (@admin handlers)
    add_webhook_routes(app)
    add_segment_stream_routes(app)
    add_replay_routes(app)
    add_profile_routes(app)
    add_erasure_routes(app)
    add_console_routes(app)
    add_console_site_routes(app)  # the console's page and assets (no token, no data)
    return app
