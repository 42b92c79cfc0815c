"""The Lua scripts of ``lua/``, loaded once and called by EVALSHA.

``Scripts(redis)`` registers every ``lua/*.lua`` with redis-py's ``register_script``:
calls go out as EVALSHA, and a NOSCRIPT answer (a restarted or flushed server) makes
redis-py load the script and retry, in pipelines too. A line ``--@include name``
pastes ``lua/includes/name.lua`` in place. Script names drop the ``-N`` key count:
``apply_batch-5.lua`` is ``scripts.apply_batch``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)


def lua_dir() -> Path:
    """``lua/`` of a source checkout, else the copy an installed wheel carries."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "lua", here / "_lua"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the lua/ scripts are missing from this installation")


@cache
def source(name: str) -> str:
    """The text of script ``name`` with its includes pasted in."""
    directory = lua_dir()
    (path,) = [p for p in directory.glob("*.lua") if p.stem.split("-")[0] == name]
    text = path.read_text()
    return _INCLUDE.sub(lambda m: (directory / "includes" / f"{m.group(1)}.lua").read_text(), text)


def script_names() -> list[str]:
    return sorted(p.stem.split("-")[0] for p in lua_dir().glob("*.lua"))


class Scripts:
    """Typed access to the registered scripts of one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.apply_batch: AsyncScript = redis.register_script(source("apply_batch"))
        self.lease_acquire: AsyncScript = redis.register_script(source("lease_acquire"))
        self.lease_release: AsyncScript = redis.register_script(source("lease_release"))
        self.erase_profile: AsyncScript = redis.register_script(source("erase_profile"))
        self.profile_view: AsyncScript = redis.register_script(source("profile_view"))
        self.segment_transition: AsyncScript = redis.register_script(source("segment_transition"))
        self.replay_record: AsyncScript = redis.register_script(source("replay_record"))
