"""The Lua scripts of ``lua/``, loaded once and called through typed wrappers.

- ``loader``: a script's text with its ``--@include`` files pasted in, and the check
  that its ``-N`` file name, its header and its code agree on its key count;
- ``typed``: ``@script`` declarations, bound to a client, called directly or queued
  in a pipeline; ``is_poison`` recognises a script's refusal of one event (error code
  ``CDP_POISON``, ``lua/includes/poison.lua``);
- ``calls``: one declaration per script, keys and arguments as named parameters, the
  reply decoded to a Struct (``BatchResult``, ``ProfileReply``, ``ProfileRow``, ``Transition``,
  ``Erased``) or a plain value; ``TransitionRequest`` is one profile of a
  ``segment_transition`` call.

``Scripts(redis)`` binds every declaration to one client: ``scripts.apply_batch``,
``scripts.lease_acquire``, ... ``load_scripts(redis)`` loads every script of ``lua/`` on
every master at start (a cluster's pipelines also reload one a node answered NOSCRIPT
for: ``cdp.cluster_client``).
"""

from __future__ import annotations

from cdp.connect import Client
from cdp.redis_nodes import for_each_master
from cdp.scripts import calls
from cdp.scripts.calls import (
    Absorbed,
    BatchResult,
    Erased,
    Frozen,
    ProfileReply,
    ProfileRow,
    Transition,
    TransitionRequest,
)
from cdp.scripts.loader import ScriptError, lua_dir, script_names, source
from cdp.scripts.typed import POISON, Bound, Call, ScriptSpec, is_poison

__all__ = [
    "POISON",
    "Absorbed",
    "BatchResult",
    "Bound",
    "Call",
    "Erased",
    "Frozen",
    "ProfileReply",
    "ProfileRow",
    "ScriptError",
    "ScriptSpec",
    "Scripts",
    "Transition",
    "TransitionRequest",
    "calls",
    "is_poison",
    "load_scripts",
    "lua_dir",
    "script_names",
    "source",
]


class Scripts:
    """Every script of ``cdp.scripts.calls``, registered on one client."""

    def __init__(self, redis: Client) -> None:
        self.apply_batch = calls.apply_batch.bind(redis)
        self.apply_profile = calls.apply_profile.bind(redis)
        self.identifier_release = calls.identifier_release.bind(redis)
        self.lease_acquire = calls.lease_acquire.bind(redis)
        self.lease_release = calls.lease_release.bind(redis)
        self.metrics_tail = calls.metrics_tail.bind(redis)
        self.histogram_add = calls.histogram_add.bind(redis)
        self.profile_view = calls.profile_view.bind(redis)
        self.segment_transition = calls.segment_transition.bind(redis)
        self.segment_forget = calls.segment_forget.bind(redis)
        self.outbox_add = calls.outbox_add.bind(redis)
        self.outbox_pop = calls.outbox_pop.bind(redis)
        self.erase_profile = calls.erase_profile.bind(redis)
        self.replay_record = calls.replay_record.bind(redis)
        self.merge_freeze = calls.merge_freeze.bind(redis)
        self.merge_absorb = calls.merge_absorb.bind(redis)
        self.merge_retarget = calls.merge_retarget.bind(redis)
        self.merge_unfreeze = calls.merge_unfreeze.bind(redis)
        self.merge_advance = calls.merge_advance.bind(redis)
        self.identifier_repoint = calls.identifier_repoint.bind(redis)
        self.merge_finish = calls.merge_finish.bind(redis)


async def load_scripts(redis: Client) -> None:
    """SCRIPT LOAD every script of ``lua/`` on every master (one Redis: on it), so the
    first EVALSHA of each finds it; idempotent."""
    for name in script_names():
        await for_each_master(redis, "SCRIPT", "LOAD", source(name))
