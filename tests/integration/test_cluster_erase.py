"""Erasure, replay, profile reads, export and metrics on the session's real 3-master
Redis Cluster, where a script or a transaction naming keys of two slots is refused.

Most profiles are built on one Redis by ``apply_batch`` (``tests.support.lua`` on a
real server: the scenario of ``tests/lua/test_segment_scripts.py``'s ``erasable``: p1
with a user, an email, two anonymous ids, a merged-away p2, counters and a vip
membership; p3 a bystander in vip), then copied to the cluster (DUMP/RESTORE); one
test has the API and a worker process build the person on the cluster itself (the
profile protocol, a cross-slot merge included), and two erase a profile a killed
process was merging another into (``tests.support.merging``). The erasure is asked of
the API (in this process, or a real ``cdp api`` process that SIGKILLs itself between
two steps: the sweeper's ``resume_open`` finishes the job); every test checks exactly
one audit record and exactly one EXIT per membership.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from redis.asyncio.cluster import RedisCluster

from cdp import erasure, keys
from cdp.connect import sync_client
from cdp.embedded import free_port
from cdp.events import StreamEvent, stream_encoder
from cdp.export import export_profiles
from cdp.identity import partition_of, routing_id
from cdp.metrics import read_snapshot
from cdp.profiles import read_profile, read_profiles
from cdp.redis_nodes import scan_all
from cdp.replay import replay
from cdp.scripts import Scripts, load_scripts
from cdp.settings import Settings
from cdp.streams import text
from tests.integration.test_cluster_slots import PARTITIONS, Api, run, settings_of
from tests.integration.test_merge_protocol import run_process, to_cluster
from tests.lua.test_segment_scripts import erasable
from tests.support.lua import LuaHarness
from tests.support.merging import Scenario
from tests.support.stack import ROOT, Stack
from tests.support.values import ADMIN_TOKEN, NOW_MS, T0, iso, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

PERSON = {"user:u1", "email:ann@example.com", "anon:a1", "anon:a2"}
ERIN = ["user:erin", "anon:visitor-1", "email:e@x.io"]


class RedisHarness(LuaHarness):
    """``LuaHarness`` on a real Redis (DUMP of fakeredis is not Redis's format)."""

    def __init__(self, runner: asyncio.Runner, now_ms: int, url: str) -> None:
        self.runner = runner
        self.now_ms = now_ms
        self.settings = Settings()
        self.partition = 0
        self.worker_id = "w1"
        self.redis = redis_sync.asyncio.Redis.from_url(url)  # type: ignore[assignment]
        self.scripts = Scripts(self.redis)
        self.r = redis_sync.Redis.from_url(url, decode_responses=True)  # type: ignore[assignment]
        self.stream = keys.stream(0)
        self.r.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        self.r.set(keys.lease(0), self.worker_id)


@pytest.fixture
def built(redis_url: str, redis_cluster_url: str) -> Iterator[str]:
    """The scenario built on one Redis and copied to the cluster; the cluster's URL."""
    with asyncio.Runner() as runner:
        harness = RedisHarness(runner, NOW_MS, redis_url)
        try:
            erasable(harness, NOW_MS)
        finally:
            harness.close()
    source = redis_sync.Redis.from_url(redis_url)
    target = redis_sync.RedisCluster.from_url(redis_cluster_url)
    try:
        for key in source.scan_iter(count=1000):
            ttl = int(source.pttl(key))
            target.restore(key, max(ttl, 0), source.dump(key), replace=True)  # type: ignore[arg-type]
    finally:
        source.close()
        target.close()
    yield redis_cluster_url


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def until(predicate: Callable[[], Awaitable[bool]], message: str) -> None:
    """``tests.support.wait.wait_until`` for a coroutine: a condition, a deadline."""
    deadline = asyncio.get_running_loop().time() + 15
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.02)


async def keys_of(redis: RedisCluster, cid: str) -> list[str]:
    return [text(k) async for k in scan_all(redis, keys.profile(cid) + "*")]


async def assert_erased_once(redis: RedisCluster, job_id: str) -> None:
    """p1 and p2 are gone without a trace, once: one audit, one EXIT, p3 untouched."""
    job = {text(k): text(v) for k, v in (await redis.hgetall(keys.job(job_id))).items()}
    assert (job["state"], job["canonicalId"], job["exits"]) == ("done", "p1", "1"), job
    assert job["identifiers"] == "4" and int(job["purgedEvents"]) >= 1  # the ALIAS's record
    audit = await redis.xrange(keys.AUDIT)
    assert [(text(f[b"job"]), text(f[b"canonicalId"])) for _, f in audit] == [(job_id, "p1")]
    exits = [
        json.loads(f[b"e"])
        for _, f in await redis.xrange(keys.SEGMENT_EVENTS)
        if f[b"canonicalId"] == b"p1" and f[b"transition"] == b"EXIT"
    ]
    assert [(e["eventId"], e["payload"]["properties"].get("reason")) for e in exits] == [
        ("seg:old:p1:2", None),  # by the rules, before
        ("seg:vip:p1:2", "erased"),
    ]
    assert await redis.zrange(keys.segment_members("vip"), 0, -1) == [b"p3"]
    assert await keys_of(redis, "p1") == [] and await keys_of(redis, "p2") == []
    for typed in PERSON:
        assert await redis.get(keys.identifier(typed)) is None, typed
    assert {text(m) for m in await redis.smembers(keys.SUPPRESSED)} == PERSON
    assert await redis.zrange(keys.PROFILES, 0, -1) == [b"p3"]
    assert await redis.zscore(keys.SEGMENTS_DUE, "p1") is None
    assert await redis.xlen(keys.MERGES) == 0
    assert not await redis.exists(keys.job_identifiers(job_id))
    assert await redis.zcard(keys.ERASURES_OPEN) == 0
    assert await redis.get(keys.identifier("user:u9")) == b"p3"


def test_profile_reads_export_and_metrics_on_the_cluster(built: str, redis_url: str) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        one = redis_sync.asyncio.Redis.from_url(redis_url)  # where the state was built
        try:
            expected = await read_profile(one, "user:u1")
            (document,) = await read_profiles(one, ["p1"])
        finally:
            await one.aclose()
        assert await read_profile(redis, "user:u1") == expected
        assert expected["canonicalId"] == "p1" and expected["mergedFrom"] == ["p2"]
        # by identifier, by canonical id, and the merged-away id answers its survivor
        for ident in ("user:u1", "email:ANN@example.com", "anon:a2", "p1", "p2"):
            resp = await api.get(f"/cdp/profiles/{ident}", headers=ADMIN)
            assert resp.status == 200, (ident, await resp.text())
            assert await resp.json() == document
        resp = await api.get("/cdp/profiles/p1/identifiers", headers=ADMIN)
        assert set((await resp.json())["identifiers"]) == PERSON
        assert (await api.get("/cdp/profiles/user:nobody", headers=ADMIN)).status == 404
        page = await (await api.get("/cdp/profiles?limit=1", headers=ADMIN)).json()
        assert [d["canonicalId"] for d in page["profiles"]] == ["p1"] and page["cursor"]
        export = await api.get("/cdp/profiles:export", headers=ADMIN)
        lines = [json.loads(line) for line in (await export.text()).splitlines()]
        assert [d["canonicalId"] for d in lines] == ["p1", "p3"]
        # the CLI's export walks the same way
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"cluster-export-{os.getpid()}.ndjson"
        with out.open("wb") as file:
            assert await export_profiles(redis, file) == 2
        out.unlink()
        # /metrics: the per-partition counters, summed over the masters
        assert ((await read_snapshot(redis, PARTITIONS)).values)["processed"] == 5
        metrics = await (await api.get("/metrics")).text()
        assert "cdp_events_processed_total 5" in metrics

    run(built, body)


def test_an_erasure_on_the_cluster_leaves_one_audit_and_one_exit(built: str) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        resp = await api.delete("/cdp/profiles/anon:a2", headers=ADMIN)  # the merged-away id
        assert resp.status == 202, await resp.text()
        job = await resp.json()
        assert (job["canonicalId"], job["identifiers"], job["exits"]) == ("p1", 4, 1)

        async def done() -> bool:
            got = await (await api.get(f"/cdp/jobs/{job['id']}", headers=ADMIN)).json()
            return bool(got["state"] == "done")

        await until(done, "the job's purge (in the background) to be done")
        await assert_erased_once(redis, job["id"])
        assert (await api.delete("/cdp/profiles/p1", headers=ADMIN)).status == 404

    run(built, body)


@pytest.mark.parametrize("step", ["unindexed", "erased", "relayed", "audited"])
def test_an_api_killed_between_two_steps_leaves_a_job_the_sweeper_finishes(
    built: str, step: str, tmp_path: Path
) -> None:
    """A real ``cdp api`` process dies (SIGKILL) right after ``step``; once its lease
    has expired, the sweeper's resume finishes the job: one audit, one EXIT."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDP_")}
    env |= {
        "CDP_REDIS_URL": built,
        "CDP_PARTITIONS": str(PARTITIONS),
        "CDP_ADMIN_TOKEN": ADMIN_TOKEN,
        "CDP_LEASE_TTL": "1s",
        "CDP_API_PROCESSES": "1",
        "CDP_FAULT_POINT": f"erase:{step}",
    }
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdp", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = redis_sync.RedisCluster.from_url(built)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout=30, message="the API to answer /readyz")
        request = urllib.request.Request(url + "/cdp/profiles/user:u1", method="DELETE")
        request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(request, timeout=30)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        (job_id,) = [text(j) for j in client.zrange(keys.ERASURES_OPEN, 0, -1)]
        assert text(client.hget(keys.job(job_id), "step")) == step
        wait_until(
            lambda: not client.exists(keys.job_lease(job_id)),
            timeout=10,
            message="the dead runner's lease to expire",
        )
        client.close()

        async def resume(redis: RedisCluster, api: Api) -> None:
            settings = settings_of(built)
            await load_scripts(redis)
            scripts = Scripts(redis)
            assert await erasure.resume_open(redis, scripts, settings, "sweeper") == 1
            await assert_erased_once(redis, job_id)

        run(built, resume)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_a_replay_on_the_cluster_publishes_each_record_once(redis_cluster_url: str) -> None:
    async def body(redis: RedisCluster, api: Api) -> None:
        settings = settings_of(redis_cluster_url)
        events = [
            StreamEvent(
                eventId=f"late-{n}",
                ts=NOW_MS - 3_600_000,
                receivedAt=NOW_MS,
                type="IDENTIFY",
                userId=f"u{n}",
                traits={"plan": "pro"},
            )
            for n in range(12)
        ]
        for ev in events:
            await redis.xadd(keys.DROPPED, {"e": stream_encoder.encode(ev), "reason": "late"})
        partitions = {partition_of(routing_id(e.userId, None, None), PARTITIONS) for e in events}
        masters = {redis.get_node_from_key(keys.stream(p)).name for p in partitions}
        assert len(masters) > 1, "the records' partitions should span masters"

        first, second = await asyncio.gather(
            replay(redis, settings, "dropped"), replay(redis, settings, "dropped")
        )
        assert first.replayed + second.replayed == 12
        again = await replay(redis, settings, "dropped")
        assert (again.replayed, again.already) == (0, 12)
        published = 0
        for p in partitions:
            published += len(await redis.xrange(keys.stream(p)))
            assert await redis.zcard(keys.replayed("dropped", p)) >= 1
        assert published == 12
        counts = (await read_snapshot(redis, PARTITIONS)).values
        assert counts["replayed"] == 12

    run(redis_cluster_url, body)


@pytest.mark.parametrize("step", ["frozen", "absorbed"])
def test_an_erasure_first_finishes_a_merge_into_the_profile_killed_mid_way(
    redis_url: str, redis_cluster_url: str, step: str
) -> None:
    """p2 was being merged into p1 by a process killed after ``step`` (its journal
    open); erasing p1 finishes that merge first, then erases all of it: p2's keys and
    identifier too, p2's membership ended once (by the merge), one audit record."""
    scenario = Scenario(2)
    to_cluster(redis_url, redis_cluster_url, scenario)
    killed = run_process(redis_cluster_url, "merge", f"merge:{step}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    async def body(redis: RedisCluster, api: Api) -> None:
        assert await redis.zrange(keys.MERGES_OPEN, 0, -1) == [b"p2"]
        resp = await api.delete("/cdp/profiles/user:u1", headers=ADMIN)
        assert resp.status == 202, await resp.text()
        job = await resp.json()
        assert (job["canonicalId"], job["identifiers"]) == ("p1", 2)

        async def done() -> bool:
            got = await (await api.get(f"/cdp/jobs/{job['id']}", headers=ADMIN)).json()
            return bool(got["state"] == "done")

        await until(done, "the job to be done")
        assert await redis.zcard(keys.MERGES_OPEN) == 0
        for cid in ("p1", "p2"):
            assert await keys_of(redis, cid) == [], cid
        for typed in ("user:u1", "anon:a2"):
            assert await redis.get(keys.identifier(typed)) is None, typed
        assert {text(m) for m in await redis.smembers(keys.SUPPRESSED)} == {"user:u1", "anon:a2"}
        assert [text(f[b"job"]) for _, f in await redis.xrange(keys.AUDIT)] == [job["id"]]
        exits = [
            (text(f[b"eventId"]), json.loads(f[b"e"])["payload"]["properties"].get("reason"))
            for _, f in await redis.xrange(keys.SEGMENT_EVENTS)
            if f[b"transition"] == b"EXIT"
        ]
        assert exits == [("seg:vip:p2:2", "merged")]
        assert await redis.zcard(keys.segment_members("vip")) == 0

    run(redis_cluster_url, body)


def test_an_erasure_of_profiles_the_workers_built_on_the_cluster(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    """The API and a worker process on the cluster (the profile protocol) build the
    person from events, a cross-slot merge included; the erasure leaves nothing of it
    on any master, one audit record, one EXIT per membership, the bystander intact."""
    cluster = sync_client(redis_cluster_url, decode_responses=True)
    stack = Stack(redis_cluster_url, cluster, tmp_path)  # type: ignore[arg-type]
    try:
        stack.set_clock(T0)
        stack.start_api(admin_token=ADMIN_TOKEN, write_keys="wk1=web")
        token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        vip = {"rule": {"trait": "plan", "op": "eq", "value": "max"}, "description": "max plan"}
        resp = stack.request("PUT", "/cdp/segments/vip", json.dumps(vip).encode(), headers=token)
        assert resp.status in (200, 201), resp.body
        stack.start_worker()
        at = iso(ms(T0))
        stack.send("c-1", at, type="TRACK", anonymousId="visitor-1", name="Browse")
        stack.send("c-2", at, type="IDENTIFY", userId="erin", traits={"plan": "pro"})
        stack.send("c-3", at, type="IDENTIFY", userId="bystander", traits={"plan": "pro"})
        stack.set_clock(ms(T0) + 10_000)
        stack.wait_idle()
        later = iso(ms(T0) + 10_000)
        stack.send("c-4", later, type="ALIAS", anonymousId="visitor-1", userId="erin")
        stack.send("c-5", later, type="IDENTIFY", userId="erin", email="E@x.io",
                   traits={"plan": "max"})  # fmt: skip
        stack.set_clock(ms(T0) + 20_000)
        stack.wait_idle()
        person = wait_until(
            lambda: (
                len({cluster.get(keys.identifier(i)) for i in ERIN}) == 1
                and cluster.get(keys.identifier("user:erin"))
            ),
            message="one profile for the person's three identifiers",
        )
        bystander = cluster.get(keys.identifier("user:bystander"))
        merged = cluster.smembers(keys.merged(person))
        assert len(merged) == 1, "the visitor's profile was merged into the user's"
        # The worker's evaluation entered the custom segment (through the outbox).
        wait_until(
            lambda: cluster.zscore(keys.segment_members("vip"), person) is not None,
            message="the person in segment vip",
        )
        resp = stack.request("DELETE", "/cdp/profiles/email:e@x.io", headers=token)
        assert resp.status == 202, resp.body
        job_id = resp.json()["id"]
        wait_until(lambda: cluster.hget(keys.job(job_id), "state") == "done", message="the job")

        for cid in [person, *merged]:
            assert list(cluster.scan_iter(match=keys.profile(cid) + "*")) == [], cid
        for typed in ERIN:
            assert cluster.get(keys.identifier(typed)) is None, typed
        assert cluster.smembers(keys.SUPPRESSED) == set(ERIN)
        assert [f["job"] for _, f in cluster.xrange(keys.AUDIT)] == [job_id]
        exits = [
            f["segment"]
            for _, f in cluster.xrange(keys.SEGMENT_EVENTS)
            if f["canonicalId"] == person
            and json.loads(f["e"])["payload"]["properties"].get("reason") == "erased"
        ]
        assert exits == ["vip"]  # pro_plan was left by the rules when the plan changed
        assert cluster.zcard(keys.segment_members("vip")) == 0
        assert cluster.get(keys.identifier("user:bystander")) == bystander
        assert cluster.zrange(keys.PROFILES, 0, -1) == [bystander]
    finally:
        stack.close()
        cluster.close()
