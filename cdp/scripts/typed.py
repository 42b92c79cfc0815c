"""Typed script calls: a script's keys and arguments as named parameters, its reply decoded.

A script is declared once (``cdp.scripts.calls``) by the function that lays out its
call, decorated with its name, key count and reply decoder::

    @script("lease_acquire", keys=1, decode=flag)
    def lease_acquire(lease: str, worker_id: str, ttl_ms: int) -> Call:
        return Call([lease], [worker_id, ttl_ms])

Bound to a client (``spec.bind(redis)``, done for all by ``cdp.scripts.Scripts``), it is
called directly, ``await scripts.lease_acquire("cdp:lease:{p3}", "w1", 5000)`` -> bool,
or queued in a pipeline, ``await scripts.lease_acquire.queue(pipe, ...)``, its reply
read back with ``scripts.lease_acquire.decode(reply)``. Either way the call goes out
as EVALSHA through redis-py's ``register_script``, and a NOSCRIPT answer (a restarted or
flushed server) makes redis-py load the script and retry, in pipelines too (a cluster's
pipeline: ``cdp.cluster_client``, which loads it on every master and retries once).

The key count is checked twice: at bind, the declared count against the script file's
``-N`` (itself checked against its header, ``cdp.scripts.loader``); at each call, the
keys the layout gives against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from cdp.connect import Client, Pipe
from cdp.scripts.loader import ScriptError, key_count, source

P = ParamSpec("P")
R = TypeVar("R")

POISON = "CDP_POISON"


def is_poison(error: BaseException) -> bool:
    """A script refused the event itself (error code ``CDP_POISON``): park it.

    Any other error (OOM, READONLY, NOSCRIPT, BUSY, a lost connection, a bug in a
    script) says nothing against the event, which is retried. The code is the first
    word of the error, as Redis's own are (``lua/includes/poison.lua``).
    """
    return isinstance(error, ResponseError) and str(error).startswith(POISON + " ")


@dataclass(frozen=True, slots=True)
class Call:
    """One call's KEYS and ARGV, in the order of the script's header."""

    keys: list[str]
    args: list[Any] = field(default_factory=list)


class ScriptSpec(Generic[P, R]):
    """A script of ``lua/``: how to lay out a call, and how to read its reply."""

    def __init__(
        self,
        name: str,
        key_count: int | None,
        layout: Callable[P, Call],
        decode: Callable[[Any], R],
    ) -> None:
        self.name = name
        self.key_count = key_count
        self._layout = layout
        self.decode = decode
        self.__doc__ = layout.__doc__

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """The KEYS and ARGV of a call (for a client of one's own, e.g. a sync one)."""
        call = self._layout(*args, **kwargs)
        if self.key_count is not None and len(call.keys) != self.key_count:
            raise ScriptError(f"{self.name} takes {self.key_count} keys, not {len(call.keys)}")
        return call

    def bind(self, redis: Client) -> Bound[P, R]:
        """Load the script (its key count checked) and register it on ``redis``."""
        text = source(self.name)
        found = key_count(self.name)
        if found != self.key_count:
            raise ScriptError(
                f"lua/{self.name}-*.lua takes {found} keys, its call {self.key_count}"
            )
        return Bound(self, redis.register_script(text))


def script(
    name: str, *, keys: int | None, decode: Callable[[Any], R]
) -> Callable[[Callable[P, Call]], ScriptSpec[P, R]]:
    """Declare the script ``lua/<name>-<keys>.lua`` by the function laying out its call
    (``keys=None``: ``lua/<name>-n.lua``, a key count that varies per call)."""

    def declare(layout: Callable[P, Call]) -> ScriptSpec[P, R]:
        return ScriptSpec(name, keys, layout, decode)

    return declare


class Bound(Generic[P, R]):
    """A script registered on one client: call it, or queue it in a pipeline."""

    def __init__(self, spec: ScriptSpec[P, R], registered: AsyncScript) -> None:
        self.spec = spec
        self.registered = registered
        self.decode = spec.decode

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        call = self.spec.call(*args, **kwargs)
        return self.decode(await self.registered(keys=call.keys, args=call.args))

    async def queue(self, pipe: Pipe, *args: P.args, **kwargs: P.kwargs) -> None:
        """Add the call to ``pipe``; its reply, in ``pipe.execute()``'s, goes to ``decode``."""
        call = self.spec.call(*args, **kwargs)
        if isinstance(pipe, ClusterPipeline):
            # Not through the registered script, which awaits the pipeline: awaiting a
            # cluster pipeline empties it. NOSCRIPT: cdp.cluster_client reloads.
            keys = call.keys
            pipe.execute_command("EVALSHA", self.registered.sha, len(keys), *keys, *call.args)
            return
        await self.registered(keys=call.keys, args=call.args, client=pipe)
