"""Keyless commands over every master: the same answer from one Redis or a cluster.

A command naming a key goes to the node that holds the key's slot, one Redis or a
cluster alike. A command without a key asks one server about itself: on a cluster,
redis-py sends INFO, DBSIZE and PING to one node of its choosing, so a health check, a
metric or a benchmark figure would describe a third of the data. These helpers ask
every master instead (a plain Redis is its own only master): ``for_each_master`` runs
one command on each, ``info_sum`` adds up the numeric fields of their INFO sections,
``dbsize`` their key counts, ``scan_all`` iterates the keys of all of them (redis-py's
cluster ``scan_iter`` already walks each primary; this names the intent),
``scan_all_sync`` the same for a blocking client (the oracle's snapshots),
``disconnect`` closes every pooled connection (a memory figure leaves the query buffers
out).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from redis.asyncio.cluster import RedisCluster

from cdp.connect import Client, SyncClient


async def for_each_master(redis: Client, *command: Any) -> list[Any]:
    """``command``'s reply from each master, in the order of ``get_primaries``."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the node list, on a client not used yet
        return list(
            await asyncio.gather(
                *(redis.execute_command(*command, target_nodes=n) for n in redis.get_primaries())
            )
        )
    return [await redis.execute_command(*command)]  # type: ignore[no-untyped-call]


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for name, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(name, {}), value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            total.setdefault(name, value)  # a version, a mode: the first master's
        else:
            total[name] = total.get(name, 0) + value


async def info_sum(redis: Client, section: str = "default") -> dict[str, Any]:
    """INFO ``section`` of every master, numbers added up (commandstats' per-command
    figures too); a text field is the first master's."""
    total: dict[str, Any] = {}
    for reply in await for_each_master(redis, "INFO", section):
        _add(total, reply)
    return total


async def dbsize(redis: Client) -> int:
    return sum(int(n) for n in await for_each_master(redis, "DBSIZE"))


async def ping_all(redis: Client) -> None:
    """Every master answers PING (a RedisError otherwise): readiness."""
    await for_each_master(redis, "PING")


async def scan_all(redis: Client, match: str, count: int = 1000) -> AsyncIterator[bytes]:
    """Every key matching ``match`` on every master (each once, unless it moves)."""
    async for key in redis.scan_iter(match=match, count=count):
        yield key


def scan_all_sync(client: SyncClient, match: str, count: int = 1000) -> Iterator[bytes | str]:
    """``scan_all`` for a blocking client: every key matching ``match`` on every master
    (redis-py's cluster SCAN visits each primary)."""
    yield from client.scan_iter(match=match, count=count)


async def disconnect(redis: Client) -> None:
    """Close every pooled connection; the next command opens one again."""
    if isinstance(redis, RedisCluster):
        await redis.aclose()
    else:
        await redis.connection_pool.disconnect()
