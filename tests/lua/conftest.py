"""Fixtures of the Lua tests: fakeredis harnesses (``tests.support.lua.LuaHarness``).

- ``runner``: the ``asyncio.Runner`` every harness of a test runs its coroutines on.
- ``now_ms``: the workers' "now", ``tests.support.values.NOW_MS`` (see there).
- ``lua``: one fresh harness; ``make_harness``: a factory of more (for comparing
  orders of the same events).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.lua import LuaHarness
from tests.support.values import NOW_MS


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@pytest.fixture
def now_ms() -> int:
    return NOW_MS


@pytest.fixture
def lua(runner: asyncio.Runner, now_ms: int) -> Iterator[LuaHarness]:
    harness = LuaHarness(runner, now_ms)
    yield harness
    harness.close()


@pytest.fixture
def make_harness(runner: asyncio.Runner, now_ms: int) -> Iterator[Any]:
    """Factory of extra fresh harnesses (for comparing orders of the same events)."""
    made: list[LuaHarness] = []

    def make(**kw: Any) -> LuaHarness:
        kw.setdefault("now_ms", now_ms)
        harness = LuaHarness(runner, **kw)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
