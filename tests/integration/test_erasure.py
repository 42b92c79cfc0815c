"""Erasure (the right to be forgotten) end to end: ``DELETE /cdp/profiles/{id}`` starts a
job that removes every trace of the profile (keys, index, memberships with EXIT
events, its events in ``cdp:events:dropped``) and leaves one audit record without
personal data; later and still-buffered events naming the person are accepted but
discarded until the suppression is lifted; a merged-away id erases its survivor."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from cdp import keys
from tests.support.stack import ROOT, Response, Stack
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.values import T0, iso, ms
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

USER, EMAIL, ANON = "erase-me", "Erase.Me@Example.COM", "anon-erase-me"
IDENTIFIERS = [f"user:{USER}", f"email:{EMAIL.lower()}", f"anon:{ANON}"]
PERSONAL = [USER, EMAIL, EMAIL.lower(), ANON]


def admin(stack: Stack, method: str, path: str) -> Response:
    return stack.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})


def at(seconds: float) -> str:
    return iso(ms(T0) + int(seconds * 1000))


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN, write_keys="wk1=web")
    stack.start_worker()
    return stack


def advance(stack: Stack, seconds: float) -> None:
    """Move the clock and wait until the workers have applied what it released."""
    stack.set_clock(ms(T0) + int(seconds * 1000))
    stack.wait_idle()


def cid_of(stack: Stack, identifier: str) -> str | None:
    value = stack.r.get(keys.identifier(identifier))
    return None if value is None else str(value)


def seed_person(stack: Stack) -> str:
    """The person (in pro_plan, with a counter) and a bystander; returns the person's cid."""
    stack.send(
        "e-1",
        at(0),
        type="IDENTIFY",
        userId=USER,
        email=EMAIL,
        anonymousId=ANON,
        traits={"plan": "pro", "name": "Erin"},
    )
    stack.send("e-2", at(1), type="TRACK", userId=USER, name="Bought", properties={"sku": "x"})
    stack.send("b-1", at(0), type="IDENTIFY", userId="bystander", traits={"plan": "pro"})
    advance(stack, 10)
    stack.wait_metric("processed", 3)
    cid = wait_until(lambda: cid_of(stack, f"user:{USER}"), message="the person's profile")
    wait_until(
        lambda: stack.r.zscore(keys.segment_members("pro_plan"), cid) is not None,
        message="the person in pro_plan",
    )
    return str(cid)


def erase(stack: Stack, identifier: str) -> dict[str, Any]:
    """DELETE the profile, wait for its job to be done; returns the job."""
    resp = admin(stack, "DELETE", f"/cdp/profiles/{identifier}")
    assert resp.status == 202, resp.body
    job_id = resp.json()["id"]
    assert job_id

    def done() -> dict[str, Any] | None:
        got = admin(stack, "GET", f"/cdp/jobs/{job_id}")
        assert got.status == 200, got.body
        job: dict[str, Any] = got.json()
        assert job["state"] in ("purging", "done"), job
        return job if job["state"] == "done" else None

    job: dict[str, Any] = wait_until(done, message=f"job {job_id} done")
    return job


def profile_keys(stack: Stack, cid: str) -> list[str]:
    return list(stack.r.scan_iter(match=f"cdp:profile:{{{cid}}}*"))


def dropped_events(stack: Stack) -> list[dict[str, Any]]:
    return [json.loads(f["e"]) for _, f in stack.r.xrange(keys.DROPPED)]


def cli_profile(stack: Stack, identifier: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdp", "profile", identifier],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def prometheus(stack: Stack, name: str) -> int:
    resp = stack.get("/metrics")
    assert resp.status == 200
    for line in resp.body.decode().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))  # prometheus_client writes floats
    raise AssertionError(f"{name} not in /metrics")


def test_erasure_removes_every_trace_and_leaves_an_anonymous_audit(live: Stack) -> None:
    cid = seed_person(live)
    bystander = cid_of(live, "user:bystander")
    # two late events (past the grace period): the person's and the bystander's
    live.send("late-1", at(-3600), type="TRACK", userId=USER, name="Old")
    live.send("late-2", at(-3600), type="TRACK", userId="bystander", name="Old")
    wait_until(lambda: len(dropped_events(live)) == 2, message="2 dropped events")

    job = erase(live, f"user:{USER}")
    assert job["canonicalId"] == cid
    assert job["identifiers"] == 3
    assert job["exits"] == 1
    assert job["purgedEvents"] == 1

    # the profile, its index entries and every key of it are gone
    assert profile_keys(live, cid) == []
    for identifier in IDENTIFIERS:
        assert cid_of(live, identifier) is None, identifier
    assert live.r.zscore(keys.PROFILES, cid) is None
    assert live.r.zscore(keys.SEGMENTS_DUE, cid) is None
    assert live.r.zscore(keys.segment_members("pro_plan"), cid) is None
    for identifier in IDENTIFIERS:
        result = cli_profile(live, identifier)
        assert result.returncode == 1, (identifier, result.stdout, result.stderr)

    # the bystander is untouched
    assert bystander is not None and cid_of(live, "user:bystander") == bystander
    assert live.r.zscore(keys.segment_members("pro_plan"), bystander) is not None
    assert [e["eventId"] for e in dropped_events(live)] == ["late-2"]

    # the membership ended with an EXIT saying why
    exits = [
        json.loads(f["e"])
        for _, f in live.r.xrange(keys.SEGMENT_EVENTS)
        if f["canonicalId"] == cid and f["transition"] == "EXIT"
    ]
    assert len(exits) == 1
    assert exits[0]["payload"]["name"] == "pro_plan EXIT"
    assert exits[0]["payload"]["properties"]["reason"] == "erased"

    # one audit record: who, when, which canonical id, which job; no personal data
    audit = live.r.xrange(keys.AUDIT)
    assert len(audit) == 1
    _, record = audit[0]
    assert record["action"] == "erase"
    assert record["canonicalId"] == cid
    assert record["job"] == job["id"]
    flat = json.dumps(record).lower()
    for value in PERSONAL:
        assert value.lower() not in flat, (value, record)
    job_text = json.dumps(admin(live, "GET", f"/cdp/jobs/{job['id']}").json()).lower()
    for value in PERSONAL:
        assert value.lower() not in job_text, (value, job_text)


def test_erasure_purges_the_refused_requests_naming_the_person(live: Stack) -> None:
    cid = seed_person(live)
    headers = {"Content-Type": "text/plain"}
    refused = [
        # the email as sent (not lower-cased), in a body cut at 2 KiB by the record
        {"writeKey": "wk1", "timestamp": "never", "traits": {"email": EMAIL}, "pad": "x" * 3000},
        # the userId, in a batch call refused alone (200 with rejected[])
        {"writeKey": "wk1", "batch": [{"type": "nonsense", "userId": USER}]},
        # a bystander's: stays
        {"writeKey": "wk1", "timestamp": "never", "traits": {"email": "other@example.com"}},
    ]
    for body, route in zip(refused, ("/v1/identify", "/v1/batch", "/v1/identify"), strict=True):
        resp = live.request("POST", route, json.dumps(body).encode(), headers)
        assert resp.status == 400 or resp.json()["rejected"], resp.body
    wait_until(lambda: live.r.xlen(keys.REJECTIONS) == 3, message="3 refusals recorded")

    job = erase(live, f"user:{USER}")
    assert job["canonicalId"] == cid
    assert job["purgedEvents"] == 2

    (left,) = live.r.xrange(keys.REJECTIONS)
    assert "other@example.com" in left[1]["body"]
    flat = json.dumps(live.r.xrange(keys.REJECTIONS)).lower()
    for value in PERSONAL:
        assert value.lower() not in flat, value


def test_erased_identifiers_are_suppressed_until_lifted(live: Stack) -> None:
    cid = seed_person(live)
    seq = live.r.get(keys.PROFILE_SEQ)
    # events waiting in the window when the erasure happens (ts ahead of the watermark)
    live.send("buf-1", at(10), type="TRACK", userId=USER, name="Buffered")
    resp = live.request(
        "POST",
        "/v1/track",
        json.dumps(
            {
                "userId": USER,
                "event": "Buffered",
                "messageId": "buf-2",
                "timestamp": at(10),
                "writeKey": "wk1",
            }
        ).encode(),
        {"Content-Type": "application/json"},
    )
    assert resp.status == 200, resp.body
    wait_until(lambda: live.pending() >= 2, message="the worker to hold both events")

    erase(live, "email:ERASE.me@example.com")  # normalised like an event's email
    advance(live, 30)
    live.wait_metric("suppressed", 2)

    # later events naming any of its identifiers: accepted, never applied
    live.send("late-u", at(30), type="TRACK", userId=USER, name="Again")
    live.send("late-e", at(30), type="IDENTIFY", email=EMAIL.upper(), traits={"plan": "free"})
    live.send("late-a", at(30), type="TRACK", anonymousId=ANON, name="Again")
    live.send("late-mix", at(30), type="IDENTIFY", anonymousId="fresh-anon", email=EMAIL)
    for n, body in enumerate(
        [
            {"userId": USER, "event": "Again"},
            {"anonymousId": ANON, "event": "Again"},
        ]
    ):
        resp = live.request(
            "POST",
            "/v1/track",
            json.dumps(
                {**body, "messageId": f"v1-{n}", "timestamp": at(30), "writeKey": "wk1"}
            ).encode(),
            {"Content-Type": "application/json"},
        )
        assert (resp.status, resp.json()) == (200, {"success": True}), resp.body
    advance(live, 60)
    live.wait_metric("suppressed", 8)
    assert live.metric("suppressed") == 8
    assert prometheus(live, "cdp_events_suppressed_total") == 8
    for identifier in [*IDENTIFIERS, "anon:fresh-anon"]:
        assert cid_of(live, identifier) is None, identifier
    assert profile_keys(live, cid) == []
    assert live.r.get(keys.PROFILE_SEQ) == seq  # no profile was created
    assert sorted(live.r.zrange(keys.PROFILES, 0, -1)) == [cid_of(live, "user:bystander")]

    resp = admin(live, "GET", "/cdp/suppressions")
    assert resp.status == 200 and sorted(resp.json()["suppressed"]) == sorted(IDENTIFIERS)

    # lifting the userId's suppression: a new event makes a fresh profile
    assert admin(live, "DELETE", f"/cdp/suppressions/user:{USER}").status == 204
    assert admin(live, "DELETE", f"/cdp/suppressions/user:{USER}").status == 404
    resp = admin(live, "GET", "/cdp/suppressions")
    assert sorted(resp.json()["suppressed"]) == sorted(IDENTIFIERS[1:])
    live.send("reborn", at(60), type="IDENTIFY", userId=USER, traits={"plan": "basic"})
    advance(live, 90)
    fresh = wait_until(lambda: cid_of(live, f"user:{USER}"), message="a fresh profile")
    assert fresh != cid
    traits = {k: json.loads(v)["v"] for k, v in live.r.hgetall(keys.traits(fresh)).items()}
    assert traits == {"plan": "basic"}
    assert live.r.smembers(keys.identifiers(fresh)) == {f"user:{USER}"}
    assert live.r.hkeys(keys.counters(fresh)) == [keys.SEEN]  # only the new event's activity
    assert (
        sum(
            int(c) for _, c in live.r.zrange(keys.counter(fresh, keys.SEEN), 0, -1, withscores=True)
        )
        == 1
    )


def test_a_merged_away_id_erases_its_survivor(live: Stack) -> None:
    # three profiles: the anonymous visitor, the user, an email seen alone
    live.send("m-1", at(0), type="TRACK", anonymousId=ANON, name="Browse")
    live.send("m-2", at(0), type="IDENTIFY", userId=USER, traits={"plan": "x"})
    live.send("m-3", at(0), type="IDENTIFY", email=EMAIL, traits={"newsletter": True})
    advance(live, 10)
    cids = {cid_of(live, i) for i in IDENTIFIERS}
    assert None not in cids and len(cids) == 3
    # the email's profile merges into the user's, then that one with the visitor's
    live.send("m-4", at(10), type="IDENTIFY", userId=USER, email=EMAIL)
    advance(live, 20)
    live.send("m-5", at(20), type="ALIAS", anonymousId=ANON, userId=USER)
    advance(live, 30)
    survivor = wait_until(
        lambda: len({cid_of(live, i) for i in IDENTIFIERS}) == 1 and cid_of(live, IDENTIFIERS[0]),
        message="one profile for the three identifiers",
    )
    losers = sorted(str(c) for c in cids - {survivor})
    for loser in losers:
        assert live.r.hget(keys.profile(loser), "mergedInto") == survivor

    job = erase(live, losers[-1])
    assert job["canonicalId"] == survivor
    for cid in [survivor, *losers]:
        assert profile_keys(live, cid) == [], cid
    for identifier in IDENTIFIERS:
        assert cid_of(live, identifier) is None, identifier
    for gone in [*losers, survivor, f"user:{USER}"]:
        assert admin(live, "DELETE", f"/cdp/profiles/{gone}").status == 404, gone
    assert len(live.r.xrange(keys.AUDIT)) == 1


def test_erasure_leaves_no_identifier_in_the_merge_records(stack: Stack) -> None:
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN)
    stack.start_worker(max_emails="1")
    stack.send("r-1", at(0), type="IDENTIFY", userId=USER, email="first@example.com")
    stack.send("r-2", at(1), type="IDENTIFY", userId=USER, email=EMAIL)
    advance(stack, 10)
    wait_until(lambda: stack.r.xlen(keys.MERGES), message="the email limit refusal")
    erase(stack, f"user:{USER}")
    records = json.dumps(stack.r.xrange(keys.MERGES)).lower()
    for value in (USER, EMAIL.lower(), "first@example.com"):
        assert value not in records, (value, records)


def test_an_api_killed_mid_erasure_leaves_a_job_the_sweeper_finishes(stack: Stack) -> None:
    """The API process dies (SIGKILL) after the EXIT went to the profile's outbox and
    before it was relayed; the worker's sweeper resumes the job once its lease has
    expired: one EXIT, one audit record, every trace gone."""
    stack.set_clock(T0)
    stack.start_api(admin_token=TOKEN, write_keys="wk1=web", fault_point="erase:erased")
    stack.start_worker()
    cid = seed_person(stack)
    api = stack.processes[0]
    with pytest.raises(OSError):  # the connection dies with the process
        admin(stack, "DELETE", f"/cdp/profiles/user:{USER}")
    assert api.wait(timeout=15) == -signal.SIGKILL
    (job_id,) = stack.r.zrange(keys.ERASURES_OPEN, 0, -1)

    wait_until(
        lambda: stack.r.hget(keys.job(job_id), "state") == "done",
        message="the sweeper to finish the job",
    )
    job = stack.r.hgetall(keys.job(job_id))
    assert (job["canonicalId"], job["identifiers"], job["exits"]) == (cid, "3", "1")
    assert [f["job"] for _, f in stack.r.xrange(keys.AUDIT)] == [job_id]
    exits = [
        f["eventId"]
        for _, f in stack.r.xrange(keys.SEGMENT_EVENTS)
        if f["canonicalId"] == cid and f["transition"] == "EXIT"
    ]
    assert exits == [f"seg:pro_plan:{cid}:2"]
    assert profile_keys(stack, cid) == []
    for identifier in IDENTIFIERS:
        assert cid_of(stack, identifier) is None, identifier
    assert stack.r.zscore(keys.segment_members("pro_plan"), cid) is None
    assert stack.r.zrange(keys.ERASURES_OPEN, 0, -1) == []
