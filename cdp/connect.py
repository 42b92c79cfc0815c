"""Every Redis client, for one Redis or a Redis Cluster, and waiting for Redis at start.

``redis-url`` names one Redis (``redis://``, ``rediss://``, ``unix://``) or any node of
a cluster (``redis://host:port``, as ``redis-cli -c`` takes it), or several startup
nodes of a cluster (``redis-cluster://[user:password@]h1:p1,h2:p2``). ``redis-cluster``
says which: ``auto`` asks the server once at connect (``INFO cluster``:
``cluster_enabled:1``), ``yes`` and ``no`` skip the question. A cluster has database 0
only: another one is refused (``SettingsError``).

``connect(settings)`` (one-shot commands) and ``redis_client(settings, cluster=...)``
(the API, the workers, the live stream) build redis.asyncio's ``Redis`` or
``RedisCluster`` (which follows MOVED and ASK; ``cdp.cluster_client``'s, whose
pipelines load a script a node answered NOSCRIPT for) with the same policy: a command not
answered within ``redis-timeout`` fails (the API answers 503, a worker retries).
``sync_client(url)`` is the blocking variant (the fault suite). ``Client``, ``Pipe``
and ``SyncClient`` are the types the rest of the code is written against.

``wait_for_redis`` asks until Redis answers, with backoff and one log line per attempt,
so the start order of Redis, the API and the workers does not matter (compose, systemd
and Kubernetes start them in parallel; a Redis loading a large AOF answers LOADING for a
while; a cluster being formed answers ``cluster_state:fail`` until its slots are
covered). It says what it found (``Reached.cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis as redis_sync
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisError

from cdp.cluster_client import ScriptingCluster
from cdp.errors import SettingsError
from cdp.settings import Settings

Client: TypeAlias = Redis | RedisCluster
Pipe: TypeAlias = Pipeline | ClusterPipeline
SyncClient: TypeAlias = redis_sync.Redis | redis_sync.RedisCluster

CLUSTER_SCHEME = "redis-cluster://"
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
# RedisCluster refuses a command (MaxConnectionsError) past this many connections to a
# node instead of waiting for one; a plain Redis client has no limit.
MAX_CONNECTIONS_PER_NODE = 1000


@dataclass(frozen=True, slots=True)
class Target:
    """What ``redis-url`` names: the nodes to start from, and the client's options."""

    nodes: list[tuple[str, int]]  # the one Redis, or the cluster's startup nodes
    options: dict[str, Any]  # redis-py's connection keywords from the URL (db, password...)
    url: str  # a URL of the first node, for a plain client
    cluster: bool | None  # None: ask the server (redis-cluster = auto)


def target(url: str, cluster: str = "auto") -> Target:
    """Parse ``url`` under the ``redis-cluster`` setting ``cluster`` (auto, yes, no)."""
    if url.startswith(CLUSTER_SCHEME):
        if cluster == "no":
            raise SettingsError(f"redis-url: {CLUSTER_SCHEME} names a cluster, redis-cluster=no")
        parts = urlsplit(url)
        auth, _, hosts = parts.netloc.rpartition("@")
        first = f"redis://{auth + '@' if auth else ''}{hosts.split(',')[0]}{parts.path}"
        if parts.query:
            first += "?" + parts.query
        options: dict[str, Any] = parse_url(first)  # type: ignore[no-untyped-call]
        nodes = [_host_port(h) for h in hosts.split(",") if h]
        wanted: bool | None = True
    else:
        options = parse_url(url)  # type: ignore[no-untyped-call]
        first = url
        nodes = [(str(options.get("host", "localhost")), int(options.get("port", 6379)))]
        wanted = {"yes": True, "no": False}.get(cluster)
    where = Target(nodes, options, first, wanted)
    if wanted:
        _no_database(where)
    return where


def _no_database(where: Target) -> None:
    """A cluster has database 0 only: refuse another rather than use 0 silently."""
    if int(where.options.get("db") or 0) != 0:
        raise SettingsError(
            f"redis-url: database {where.options['db']} on a Redis Cluster, which has "
            "database 0 only: drop the /db part of the URL (or use a single Redis)"
        )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = unquote(text).rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"redis-url: {text!r} is not host:port in {CLUSTER_SCHEME}h:p,...")
    return host.strip("[]"), int(port)


def _timeouts(settings: Settings, blocking_ms: int) -> dict[str, Any]:
    timeout = settings.redis_timeout_ms / 1000
    return {
        "socket_timeout": timeout + blocking_ms / 1000,
        "socket_connect_timeout": timeout,
        "health_check_interval": 10,
    }


def redis_client(settings: Settings, *, cluster: bool, blocking_ms: int = 0) -> Client:
    """A client whose commands time out after redis-timeout (+ ``blocking_ms`` for a
    connection that waits in XREAD BLOCK); ``cluster`` as ``connect`` or
    ``wait_for_redis`` found it."""
    return make_client(
        target(settings.redis_url, settings.redis_cluster),
        cluster=cluster,
        **_timeouts(settings, blocking_ms),
    )


def make_client(where: Target, *, cluster: bool, **kwargs: Any) -> Client:
    """redis-py's Redis or RedisCluster for ``where``, with ``kwargs`` (timeouts...)."""
    if not cluster:
        return Redis.from_url(where.url, **kwargs)
    return ScriptingCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in where.nodes],
        max_connections=MAX_CONNECTIONS_PER_NODE,
        **_cluster_options(where),
        **kwargs,
    )


def _cluster_options(where: Target) -> dict[str, Any]:
    """The URL's options a cluster client takes (database 0 only)."""
    _no_database(where)
    return _node_options(where)


def _node_options(where: Target) -> dict[str, Any]:
    """The URL's options for one node: no host/port (the node's), no db (INFO and PING
    answer in any), ``ssl`` for redis-py's SSL connection class (``rediss://``)."""
    options = {k: v for k, v in where.options.items() if k not in ("host", "port", "db")}
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True
    return options


async def connect(settings: Settings, **kwargs: Any) -> Client:
    """The client of a one-shot command (``cdp export``, ``cdp replay``...), ``kwargs``
    over the redis-timeout policy: redis-cluster = auto asks the server now (a RedisError
    when it does not answer)."""
    where = target(settings.redis_url, settings.redis_cluster)
    cluster = where.cluster
    if cluster is None:
        cluster = await _probe(where, settings.redis_timeout_ms / 1000, check_state=False)
    return make_client(where, cluster=cluster, **(_timeouts(settings, 0) | kwargs))


async def guess_cluster(settings: Settings, log: structlog.typing.FilteringBoundLogger) -> bool:
    """The kind of client a process that must start before Redis answers (the API)
    builds: redis-cluster yes/no, or (auto) the server's answer to one question, or a
    single Redis when it does not answer (``wait_for_redis`` tells later)."""
    where = target(settings.redis_url, settings.redis_cluster)
    if where.cluster is not None:
        return where.cluster
    try:
        return await _probe(where, settings.redis_timeout_ms / 1000, check_state=False)
    except RedisError as exc:
        log.warning("redis-cluster=auto: no answer; taking it for a single redis", error=str(exc))
        return False


def is_cluster(redis: Client) -> bool:
    return isinstance(redis, RedisCluster)


def uses_profile_protocol(redis: Client, settings: Settings) -> bool:
    """Whether events are applied (and segment events written) by the profile protocol
    of docs/cluster.md: setting ``apply-protocol``, whose ``auto`` means on a cluster."""
    if settings.apply_protocol == "auto":
        return is_cluster(redis)
    return settings.apply_protocol == "profile"


async def _probe(where: Target, timeout: float, *, check_state: bool) -> bool:
    """Is ``where`` a cluster (and, with ``check_state``, is it serving: every slot
    covered)? Each startup node in turn; the last node's error when none answers."""
    failure: RedisError = RedisError("no node to ask")
    for host, port in where.nodes:
        # Its own connection, without retries: one attempt is one question, one log line.
        probe = Redis(
            host=host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **_node_options(where),
        )
        try:
            await probe.ping()  # LOADING until the AOF is read (INFO answers meanwhile)
            enabled = int((await probe.info("cluster")).get("cluster_enabled", 0)) == 1
            if enabled and check_state:
                state = (await probe.cluster("INFO")).get("cluster_state")
                if state != "ok":
                    raise RedisError(f"cluster_state:{state} (not every slot is served yet)")
            return enabled
        except RedisError as exc:
            failure = exc
        finally:
            await probe.aclose()
    raise failure


@dataclass(frozen=True, slots=True)
class Reached:
    """Redis answered: a cluster (every slot served) or a single Redis."""

    cluster: bool


async def wait_for_redis(
    settings: Settings,
    log: structlog.typing.FilteringBoundLogger,
    stopping: asyncio.Event | None = None,
) -> Reached | None:
    """Ask until Redis answers (a cluster: until it is ok); None when ``stopping`` is set
    first. A cluster is what redis-cluster says, or (auto) what the server answers."""
    where = target(settings.redis_url, settings.redis_cluster)
    timeout = settings.redis_timeout_ms / 1000
    delay, attempt = FIRST_DELAY_S, 0
    stopping = stopping or asyncio.Event()
    while not stopping.is_set():
        attempt += 1
        try:
            cluster = await _probe(where, timeout, check_state=where.cluster is not False)
            if where.cluster is not None and cluster != where.cluster:
                raise RedisError(
                    f"redis-cluster={'yes' if where.cluster else 'no'} but the server says "
                    f"cluster_enabled:{int(cluster)}"
                )
        except RedisError as exc:  # refused, LOADING, timeout, wrong password, CLUSTERDOWN
            log.warning("waiting for redis", attempt=attempt, retry_in_s=delay, error=str(exc))
        else:
            if attempt > 1:
                log.info("redis answers", attempts=attempt, cluster=cluster)
            return Reached(cluster)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, MAX_DELAY_S)
    return None


def sync_client(url: str, cluster: str = "auto", **kwargs: Any) -> SyncClient:
    """The blocking client of ``url`` (redis-cluster ``cluster``), with ``kwargs``
    (timeouts, decode_responses...); auto asks the server now."""
    where = target(url, cluster)
    wanted = where.cluster
    if wanted is None:
        with redis_sync.Redis.from_url(where.url, socket_timeout=5) as probe:
            wanted = int(probe.info("cluster").get("cluster_enabled", 0)) == 1
    if not wanted:
        return redis_sync.Redis.from_url(where.url, **kwargs)
    return redis_sync.RedisCluster(
        startup_nodes=[redis_sync.cluster.ClusterNode(h, p) for h, p in where.nodes],  # type: ignore[no-untyped-call]
        **_cluster_options(where),
        **kwargs,
    )
