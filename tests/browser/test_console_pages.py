"""The console's pages in a real headless Chromium against a real stack (redis-server,
an API process, a worker process), each as issue 12 asks, with a screenshot of each
page (``shoot``, see conftest):

- events sent with the official Segment library appear in the live debugger, newest
  first; a filter narrows them; Pause stops the list; a row opens to its full JSON;
- a bad request shows in the Rejected tab with its 400 reason;
- a profile found by email shows its merged identifiers, traits and counters; Export
  downloads its JSON after a confirmation; Erase asks for the id to be typed;
- a custom segment saved with a mistake shows the error at the rule's field; fixed, it
  saves, and its members arrive in the list;
- a trait holding HTML is shown as text and runs nothing;
- the health page shows the counters, workers and partitions, and replays a dropped
  event after a confirmation;
- the rates of the health and segments pages are drawn from the sampled history
  (``cdp:metrics:history``, written here in the sampler's shape).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdp import keys
from tests.support.stack import Stack
from tests.support.tracking import basic, read_doc, wait_doc
from tests.support.values import ADMIN_TOKEN
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

Shoot = Callable[[Any, str], Path]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _post(stack: Stack, route: str, call: dict[str, Any], key: str = "wk1") -> Any:
    headers = {"Content-Type": "application/json", **basic(key)}
    return stack.request("POST", route, json.dumps(call).encode(), headers)


def test_events_sent_with_the_segment_library_show_in_the_debugger(
    logged_in: Any, console: Stack, analytics: tuple[Any, list[Any]], shoot: Shoot
) -> None:
    expect, page = _expect(), logged_in
    lib, errors = analytics
    user = f"dbg-{uuid.uuid4().hex[:8]}"
    # the debugger (the page after logging in) polls first: its tap holds what follows
    wait_until(lambda: console.r.exists(keys.DEBUGGER_WATCH), message="the debugger watching")
    lib.identify(user, {"email": f"{user}@example.com", "plan": "pro"})
    lib.track(user, "Plan Upgraded", {"from": "free", "to": "pro"})
    lib.flush()
    assert errors == []

    rows = page.locator(".feed-events tr.summary")
    expect(rows.filter(has_text="Plan Upgraded")).to_have_count(1)
    expect(rows.filter(has_text=f"user:{user}")).to_have_count(2)
    # newest first: the track call was accepted after the identify
    expect(rows.first).to_contain_text("Plan Upgraded")
    assert "web" in rows.first.inner_text()  # the write key's source

    # the row opens to the event's full JSON
    rows.first.click()
    detail = page.locator(".feed-events tr.detail pre").first
    expect(detail).to_be_visible()
    event = json.loads(detail.inner_text())
    assert event["name"] == "Plan Upgraded" and event["userId"] == user
    assert event["properties"] == {"from": "free", "to": "pro"}
    shoot(page, "debugger")

    # a filter on the type narrows the list to the identify call
    page.get_by_label("type").select_option("identify")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("identify", ignore_case=True)

    # paused, a new event does not appear; resumed, it does
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    lib.identify(user, {"plan": "enterprise"})
    lib.flush()
    wait_until(
        lambda: (
            (doc := read_doc(console, f"user:{user}"))
            and doc["traits"]["plan"]["v"] == "enterprise"
        ),
        message="the second identify to be applied",
    )
    expect(rows).to_have_count(1)
    page.get_by_role("button", name="Resume").click()
    expect(rows).to_have_count(2)


def test_a_bad_request_shows_its_400_reason(logged_in: Any, console: Stack, shoot: Shoot) -> None:
    expect, page = _expect(), logged_in
    bad = _post(console, "/v1/track", {"userId": "u-bad", "properties": {"a": 1}})
    assert bad.status == 400
    reason = bad.json()["message"]
    page.get_by_role("tab", name="Rejected").click()
    row = page.locator(".feed-rejections tr.summary").first
    expect(row).to_contain_text("400")
    expect(row).to_contain_text("/v1/track")
    expect(row).to_contain_text(reason)
    row.click()
    body = page.locator(".feed-rejections tr.detail pre").first
    expect(body).to_be_visible()
    assert json.loads(body.inner_text()) == {"userId": "u-bad", "properties": {"a": 1}}
    shoot(page, "rejected")


def test_a_profile_found_by_email_shows_its_merged_identifiers(
    logged_in: Any, console: Stack, analytics: tuple[Any, list[Any]], shoot: Shoot
) -> None:
    expect, page = _expect(), logged_in
    lib, errors = analytics
    user, anon = f"ada-{uuid.uuid4().hex[:8]}", f"anon-{uuid.uuid4().hex[:8]}"
    email = f"{user}@example.com"
    # the anonymous visitor gets a profile of its own first; the alias then merges it
    lib.page(anonymous_id=anon, name="Pricing")
    lib.flush()
    anon_cid = wait_doc(console, f"anon:{anon}", {"$page": 1})["canonicalId"]
    lib.identify(user, {"email": email, "name": "Ada", "plan": "pro"})
    lib.track(user, "Order Completed", {"total": 30})
    lib.track(user, "Order Completed", {"total": 12})
    lib.flush()
    user_cid = wait_doc(console, f"user:{user}", {"Order Completed": 2})["canonicalId"]
    assert user_cid != anon_cid
    lib.alias(anon, user)
    lib.flush()
    assert errors == []
    cid = wait_until(
        lambda: (
            (u := read_doc(console, f"user:{user}"))
            and (a := read_doc(console, f"anon:{anon}"))
            and u["canonicalId"] == a["canonicalId"]
            and u["canonicalId"]
        ),
        message="the anonymous profile to be merged into the user's",
    )
    (loser,) = {anon_cid, user_cid} - {cid}

    page.get_by_role("link", name="Profiles").click()
    page.get_by_label("identifier").fill(f"email:{email.upper()}")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#canonical-id")).to_have_text(cid)
    identifiers = page.locator("ul.identifiers li")
    expect(identifiers).to_contain_text([f"anon:{anon}", f"email:{email}", f"user:{user}"])
    plan = page.locator("tr[data-trait=plan]")
    expect(plan.locator(".trait-value")).to_have_text("pro")
    expect(plan).to_contain_text(re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"))
    expect(page.locator("[data-counter='Order Completed'] figcaption")).to_contain_text("total 2")
    expect(page.locator("[data-counter='Order Completed'] svg rect").first).to_be_attached()
    expect(page.locator("table.merges")).to_contain_text("merged")
    expect(page.locator("table.merges")).to_contain_text(loser)
    expect(page.locator(".facts")).to_contain_text(loser)  # merged from
    shoot(page, "profiles")

    # Export, after a confirmation: the profile's JSON through fetch and a Blob, no token
    # in any URL; Cancel downloads nothing.
    page.get_by_role("button", name="Export JSON").click()
    page.locator("dialog.confirm").get_by_role("button", name="Cancel").click()
    expect(page.locator("dialog.confirm")).to_have_count(0)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export JSON").click()
        page.locator("dialog.confirm").get_by_role("button", name="Export").click()
    exported = json.loads(Path(download_info.value.path()).read_text())
    assert exported["canonicalId"] == cid and f"user:{user}" in exported["identifiers"]

    # Erase: the button stays disabled until the id is typed; Cancel erases nothing
    page.get_by_role("button", name="Erase…").click()
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    confirm = dialog.get_by_role("button", name="Erase")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("confirmation").fill(cid + "x")
    expect(confirm).to_be_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert read_doc(console, f"user:{user}") is not None
    page.get_by_role("button", name="Erase…").click()
    dialog.get_by_label("confirmation").fill(cid)
    confirm.click()
    expect(page.locator(".action-status")).to_contain_text("Erasure job")
    wait_until(
        lambda: read_doc(console, f"user:{user}") is None, message="the profile to be erased"
    )


def test_a_custom_segment_shows_its_error_at_the_field_then_fills(
    logged_in: Any, console: Stack, shoot: Shoot
) -> None:
    expect, page = _expect(), logged_in
    for n in range(3):
        call = {"userId": f"seg-{n}", "traits": {"plan": "pro" if n < 2 else "free"}}
        assert _post(console, "/v1/identify", call).status == 200
    wait_until(
        lambda: all(read_doc(console, f"user:seg-{n}") for n in range(3)),
        message="the three profiles",
    )

    _write_history(console, int(page.evaluate("() => Date.now()")))  # rates to draw
    page.get_by_role("link", name="Segments").click()
    page.get_by_label("Name", exact=True).fill("pros")
    page.get_by_label("Description").fill("Paying customers")
    rule = page.get_by_label("Rule (JSON)")
    # a JSON syntax error is shown at the rule field
    rule.fill('{"trait": "plan", "op": "eq", "value": "pro"')
    page.get_by_role("button", name="Preview").click()
    rule_errors = page.locator(".field-error[data-field=rule]")
    expect(rule_errors).to_contain_text("not valid JSON")

    # a rule mistake: the path and the message at the rule field
    mistake = {"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"inactive": "7q"}]}
    rule.fill(json.dumps(mistake))
    page.get_by_role("button", name="Preview").click()
    expect(rule_errors).to_contain_text("rule.all[1]")
    expect(rule_errors).to_contain_text("7q")
    expect(rule).to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Save").click()
    expect(rule_errors).to_contain_text("rule.all[1]")
    assert console.request("GET", "/cdp/segments/pros", headers=ADMIN).status == 404

    # a bad name is shown at the name field
    page.get_by_label("Name", exact=True).fill("no spaces allowed")
    rule.fill(json.dumps({"trait": "plan", "op": "eq", "value": "pro"}))
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".field-error[data-field=name]")).not_to_be_empty()

    # fixed: the preview counts the matches, Save stores it, the members arrive
    page.get_by_label("Name", exact=True).fill("pros")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".editor-result")).to_contain_text("2 profile(s) match")
    expect(rule_errors).to_be_empty()
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".editor-result")).to_contain_text("Saved pros")
    row = page.locator("tr[data-segment=pros]")
    expect(row.locator(".members")).to_have_text("2")
    expect(row).to_contain_text("done")
    # a new member arrives while the page is open
    assert _post(console, "/v1/identify", {"userId": "seg-2", "traits": {"plan": "pro"}}).status
    expect(row.locator(".members")).to_have_text("3")
    shoot(page, "segments")


def test_a_trait_holding_html_is_shown_as_text(
    logged_in: Any, console: Stack, shoot: Shoot
) -> None:
    expect, page = _expect(), logged_in
    payload = "<img src=x onerror=window.__xss=1>"
    call = {"userId": "xss-1", "traits": {"bio": payload, "email": "xss@example.com"}}
    # The debugger open first, so its tap holds the event (the partition streams are
    # trimmed once it is applied: what came before the debugger opened may be gone).
    page.get_by_role("link", name="Debugger").click()
    wait_until(lambda: console.r.exists(keys.DEBUGGER_WATCH), message="the debugger watching")
    assert _post(console, "/v1/identify", call).status == 200
    wait_until(lambda: read_doc(console, "user:xss-1"), message="the profile")
    page.goto(page.url.split("#")[0] + "#/profiles?id=user%3Axss-1")
    cell = page.locator("tr[data-trait=bio] .trait-value")
    expect(cell).to_have_text(payload)
    assert cell.locator("img").count() == 0
    assert page.locator("img[src=x]").count() == 0
    assert page.evaluate("() => window.__xss") is None
    # the debugger shows the same event as text too
    page.get_by_role("link", name="Debugger").click()
    page.locator(".feed-events tr.summary").filter(has_text="user:xss-1").first.click()
    expect(page.locator(".feed-events tr.detail pre").first).to_contain_text(payload)
    assert page.locator("img[src=x]").count() == 0
    assert page.evaluate("() => window.__xss") is None


def test_the_health_page_replays_a_dropped_event_after_a_confirmation(
    logged_in: Any, console: Stack, shoot: Shoot
) -> None:
    expect, page = _expect(), logged_in
    call = {"userId": "late-1", "event": "Old", "timestamp": "2020-01-01T00:00:00Z"}
    assert _post(console, "/v1/track", call).status == 200
    console.wait_metric("dropped", 1)
    page.get_by_role("link", name="Health").click()
    expect(page.locator("[data-rate=accepted] figcaption")).to_contain_text("total 1")
    expect(page.locator("table.workers tbody tr")).to_have_count(1)
    expect(page.locator("table.partitions tbody tr")).to_have_count(console.partitions)
    replay = page.locator("button[data-replay=dropped]")
    expect(replay).to_have_text("Replay dropped (1)")
    replay.click()
    page.locator("dialog.confirm").get_by_role("button", name="Replay").click()
    expect(page.locator(".action-status")).to_contain_text("Replayed 1 of 1")
    console.wait_metric("replayed", 1)
    wait_until(lambda: read_doc(console, "user:late-1"), message="the replayed event's profile")


def _write_history(console: Stack, now_ms: int) -> None:
    """Samples of cdp:metrics:history as the sampler writes them (the contract's shape):
    one every 10 minutes over the last hour, the last interval at 2 events/s accepted
    and applied, 6 ENTER/min and 3 EXIT/min in pro_plan. They replace the worker's one
    sample (its next is an hour away)."""
    wait_until(lambda: console.r.xlen(keys.METRICS_HISTORY) > 0, message="the first sample")
    console.r.delete(keys.METRICS_HISTORY)
    accepted, enter, exit_ = 0, 0, 0
    steps = zip(
        (0, 900, 1500, 600, 2100, 1200),
        (0, 30, 90, 15, 60, 60),
        (0, 10, 40, 5, 30, 30),
        strict=True,
    )
    for n, (d_accepted, d_enter, d_exit) in enumerate(steps):
        accepted, enter, exit_ = accepted + d_accepted, enter + d_enter, exit_ + d_exit
        at = now_ms - (5 - n) * 600_000
        sample = {
            "at": at,
            "counters": {"accepted": accepted, "processed": accepted, "dropped": 0},
            "segments": {"pro_plan": {"enter": enter, "exit": exit_}},
        }
        console.r.xadd(keys.METRICS_HISTORY, {"s": json.dumps(sample)}, id=f"{at}-0")


def test_rates_over_the_last_hour_are_drawn_from_the_history(
    logged_in: Any, console: Stack, shoot: Shoot
) -> None:
    expect, page = _expect(), logged_in
    _write_history(console, int(page.evaluate("() => Date.now()")))
    page.get_by_role("link", name="Health").click()
    accepted = page.locator("[data-rate=accepted]")
    expect(accepted).to_contain_text("2/s")
    expect(accepted.locator("svg polyline")).to_have_count(1)
    expect(page.locator("[data-rate=applied]")).to_contain_text("2/s")
    expect(page.locator("[data-rate=dropped]")).to_contain_text("0/s")
    expect(page.locator("table.workers tbody tr")).to_have_count(1)  # the worker is up
    shoot(page, "health")

    page.get_by_role("link", name="Segments").click()
    row = page.locator("tr[data-segment=pro_plan]")
    expect(row.locator("td").nth(2)).to_contain_text("6/min")
    expect(row.locator("td").nth(3)).to_contain_text("3/min")
    expect(row.locator("svg polyline")).to_have_count(2)
