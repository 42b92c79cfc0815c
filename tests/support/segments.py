"""Reading profiles as the segment engine does, for the tests.

``full_view``: ``profile_view`` of every trait and every counter of the profiles (the
engine names the counters its rules read; the tests' reference read names every
counter each profile has, from its counters hash), with each profile's due score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdp import keys
from cdp.connect import Client
from cdp.scripts import ProfileRow, Scripts
from cdp.streams import text


async def counter_names(redis: Client, cids: Sequence[str]) -> set[str]:
    """Every counter name the profiles ``cids`` have."""
    names: set[str] = set()
    for cid in cids:
        names |= {text(n) for n in await redis.hkeys(keys.counters(cid))}
    return names


async def full_view(redis: Client, cids: Sequence[str]) -> list[ProfileRow]:
    """``profile_view`` of every trait and counter of ``cids`` (one call, one Redis)."""
    names = await counter_names(redis, cids)
    return await Scripts(redis).profile_view(cids, traits=None, counters=names)


async def dues(redis: Client, cids: Sequence[str]) -> list[Any]:
    """The profiles' scores in the due index (None: not due), as the engine reads them."""
    return list(await redis.zmscore(keys.SEGMENTS_DUE, list(cids)))
