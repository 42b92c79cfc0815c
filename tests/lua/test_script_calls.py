"""The typed script calls of ``cdp.scripts``: every script declared once, its ``-N`` key
count checked at load against its header and code, and against the keys each call
passes; the same decoded reply whether called directly or queued in a pipeline."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from cdp import keys
from cdp.scripts import Call, ScriptError, Scripts, ScriptSpec, calls, loader, script_names
from cdp.scripts.typed import script

DECLARED = {
    spec.name: spec for _, spec in inspect.getmembers(calls) if isinstance(spec, ScriptSpec)
}


def test_every_script_is_declared_once_with_the_key_count_of_its_file_name() -> None:
    # publish-n.lua's call is the publisher's own (cdp.api.publisher._Request).
    assert set(DECLARED) == set(script_names()) - {"publish"}
    for name, spec in DECLARED.items():
        assert spec.key_count == loader.key_count(name), name
        loader.source(name)  # its header and code agree with its name
    redis = fakeredis.FakeAsyncRedis()
    bound = vars(Scripts(redis))
    assert {b.spec.name for b in bound.values()} == set(DECLARED) == set(bound)


@pytest.fixture
def lua_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty lua/ of our own in place of the real one."""
    (tmp_path / "includes").mkdir()
    monkeypatch.setattr(loader, "lua_dir", lambda: tmp_path)
    loader.source.cache_clear()
    yield tmp_path
    loader.source.cache_clear()


def header(*key_lines: str) -> str:
    lines = "\n".join(f"  {line}" for line in key_lines)
    return f"--[[\n  a test script\n\n{lines}\n  ARGV[1]  a value\n]]\n"


def test_a_script_whose_header_lists_other_keys_than_its_name_says_is_refused(
    lua_dir: Path,
) -> None:
    (lua_dir / "two-2.lua").write_text(header("KEYS[1]  a key") + "return {KEYS[1], ARGV[1]}\n")
    with pytest.raises(ScriptError, match=r"two-2.lua takes 2 keys, but its header lists"):
        loader.source("two")


def test_a_script_whose_code_reads_a_key_past_its_count_is_refused(lua_dir: Path) -> None:
    (lua_dir / "includes" / "helper.lua").write_text("local function third() return KEYS[3] end\n")
    (lua_dir / "two-2.lua").write_text(
        header("KEYS[1]  a key", "KEYS[2]  another") + "--@include helper\nreturn KEYS[2]\n"
    )
    with pytest.raises(ScriptError, match=r"its code reads KEYS\[1, 2, 3\]"):
        loader.source("two")


def test_a_zero_key_script_reads_no_keys_and_a_variable_one_is_not_counted(
    lua_dir: Path,
) -> None:
    (lua_dir / "none-0.lua").write_text(header() + "return KEYS[1]\n")
    with pytest.raises(ScriptError, match="none-0.lua takes 0 keys"):
        loader.source("none")
    (lua_dir / "many-n.lua").write_text(
        header("KEYS[1]  first", "KEYS[1 + i]  i-th") + "return 1\n"
    )
    assert loader.key_count("many") is None
    assert loader.source("many").endswith("return 1\n")
    (lua_dir / "odd-x.lua").write_text(header() + "return 1\n")
    with pytest.raises(ScriptError, match="not a key count"):
        loader.source("odd")


def test_a_declaration_is_held_to_its_file_and_its_calls_to_their_key_count(
    lua_dir: Path,
) -> None:
    (lua_dir / "pair-2.lua").write_text(
        header("KEYS[1]  a key", "KEYS[2]  another") + "return {KEYS[1], KEYS[2]}\n"
    )

    @script("pair", keys=1, decode=list)
    def declared_one(a: str) -> Call:
        return Call([a])

    with pytest.raises(ScriptError, match="takes 2 keys, its call 1"):
        declared_one.bind(fakeredis.FakeAsyncRedis())

    @script("pair", keys=2, decode=list)
    def passes_one(a: str) -> Call:
        return Call([a])  # a bug: the script takes two

    with pytest.raises(ScriptError, match="pair takes 2 keys, not 1"):
        passes_one.call("k")


def test_a_call_direct_and_queued_gives_the_same_decoded_reply() -> None:
    async def scenario() -> tuple[list[bool], list[bool]]:
        redis = fakeredis.FakeAsyncRedis()
        scripts = Scripts(redis)
        lease = keys.lease(3)
        direct = [
            await scripts.lease_acquire(lease, "w1", 5_000),
            await scripts.lease_acquire(lease, "w2", 5_000),
            await scripts.lease_release(lease, "w1"),
        ]
        async with redis.pipeline(transaction=False) as pipe:
            await scripts.lease_acquire.queue(pipe, lease, "w1", 5_000)
            await scripts.lease_acquire.queue(pipe, lease, "w2", 5_000)
            await scripts.lease_release.queue(pipe, lease, "w1")
            replies = await pipe.execute()
        decoders = (scripts.lease_acquire, scripts.lease_acquire, scripts.lease_release)
        queued = [bound.decode(reply) for bound, reply in zip(decoders, replies, strict=True)]
        await redis.aclose()
        return direct, queued

    direct, queued = asyncio.run(scenario())
    assert direct == queued == [True, False, True]
