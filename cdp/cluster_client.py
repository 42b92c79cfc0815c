"""The cluster client: redis-py's ``RedisCluster`` whose pipelines survive NOSCRIPT.

On one Redis, redis-py's pipeline loads every registered script it carries (SCRIPT
EXISTS, then SCRIPT LOAD) before it executes. Its cluster pipeline does not: an
EVALSHA reaching a node whose script cache is empty (a replica promoted by a failover,
a node added by resharding, a restarted node) comes back as a NoScriptError reply.
``ScriptingCluster`` (what ``cdp.connect`` builds for a cluster) remembers the text of
every script registered on it (``register_script``, which every ``cdp.scripts`` call
and the publisher go through), and its pipeline, ``ScriptingClusterPipeline``, keeps
the commands it queued: after executing, the calls answered NOSCRIPT (which did
nothing) are sent once more after loading every known script on every master. A call
answered NOSCRIPT twice keeps its error. The retried calls run after the rest of the
pipeline: fine for calls whose keys no other command of the pipeline touches, as ours
are. (redis-py's cluster pipeline also refuses its
``evalsha`` method outright; this one queues it, routed by its keys like any command.
A script's call is queued without awaiting the pipeline: awaiting a cluster pipeline
empties it, see ``cdp.scripts.typed``.) Transactions (MULTI/EXEC) are left as
redis-py runs them: no script is queued in one.

``load_scripts`` (``cdp.scripts``) loads every script on every master at start, so a
NOSCRIPT is the exception (a failover, a new node), not the first call of each script.

``ScriptingCluster`` also routes XREADGROUP and XREAD itself (their keys follow
``STREAMS``): redis-py asks a node ``COMMAND GETKEYS`` for every such call, a round
trip per read, and during a failover that question, sent on a connection half made,
failed inside redis-py with an AttributeError, which stopped a worker's read loop.
That AttributeError (redis-py 8.1: a connection torn down while a command was being
sent on it, ``'NoneType' object has no attribute 'writelines'``) reaches other
commands too during a failover (a lease script of the webhooks loop, found by
``tests/integration/test_cluster_faults.py``): ``execute_command`` and the pipeline
raise it as the ``ConnectionError`` it is, which every loop retries.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.typing import ScriptTextT


class ScriptingCluster(RedisCluster):
    """A RedisCluster that knows its scripts' texts and pipelines that reload them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_texts: dict[str, ScriptTextT] = {}

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise _lost(exc) from exc

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of a command; XREADGROUP/XREAD's from their stream keys, here."""
        streams = _stream_keys(command, args)
        if streams:
            slots = {self.keyslot(key) for key in streams}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)

    # redis-py's stubs give the sync ScriptCommands' return type; the async client's is this.
    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        registered = super().register_script(script)
        self.script_texts[registered.sha] = script
        return registered

    async def load_known_scripts(self) -> None:
        """SCRIPT LOAD every registered script on every master (redis-py sends SCRIPT
        LOAD to every primary of a cluster)."""
        for text in list(self.script_texts.values()):
            await self.script_load(text)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint or transaction:  # redis-py's own checks and transactions
            return super().pipeline(transaction, shard_hint)
        # "_event_dispatcher" is set by redis-py's ClusterPipeline, which mypy calls abstract.
        return ScriptingClusterPipeline(self)  # type: ignore[abstract]

    def plain_pipeline(self) -> ClusterPipeline:
        """redis-py's own pipeline (a retry that must not retry again)."""
        return super().pipeline()


def _lost(exc: AttributeError) -> Exception:
    """redis-py's AttributeError on a connection torn down under a sender, as the
    ConnectionError it is; any other AttributeError as it was (a bug)."""
    if "'NoneType' object has no attribute" in str(exc):
        return RedisConnectionError(f"connection lost while sending: {exc}")
    return exc


def _stream_keys(command: Any, args: tuple[Any, ...]) -> list[str]:
    """The keys of XREADGROUP (``GROUP g c [options] STREAMS k... id...``) or XREAD
    (``[options] STREAMS k... id...``); [] for another command."""
    name = (command.decode() if isinstance(command, bytes) else str(command)).upper()
    first = {"XREADGROUP": 3, "XREAD": 0}.get(name)
    if first is None:
        return []
    words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
    upper = [w.upper() for w in words]
    if "STREAMS" not in upper[first:]:
        return []
    rest = words[upper.index("STREAMS", first) + 1 :]
    return rest[: len(rest) // 2]


class ScriptingClusterPipeline(ClusterPipeline):
    """A (non-transactional) cluster pipeline whose NOSCRIPT replies are retried once
    after loading the scripts."""

    def __init__(self, client: ScriptingCluster) -> None:
        super().__init__(client, None)
        self._sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> ClusterPipeline:
        """Queue EVALSHA (redis-py's cluster pipeline refuses the method: it routes the
        call by its keys all the same, which must be one slot)."""
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def execute_command(self, *args: Any, **kwargs: Any) -> ClusterPipeline:
        # A copy: redis-py pops target_nodes from the kwargs it keeps.
        self._sent.append((args, dict(kwargs)))
        return super().execute_command(*args, **kwargs)

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        sent, self._sent = self._sent, []
        try:
            replies = await super().execute(False, allow_redirections)
        except AttributeError as exc:
            raise _lost(exc) from exc
        forgotten = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        client = self.cluster_client
        if forgotten and isinstance(client, ScriptingCluster) and len(sent) == len(replies):
            await client.load_known_scripts()
            again = client.plain_pipeline()
            for i in forgotten:
                args, kwargs = sent[i]
                again.execute_command(*args, **kwargs)
            for i, reply in zip(forgotten, await again.execute(False), strict=True):
                replies[i] = reply
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies
