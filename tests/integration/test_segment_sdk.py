"""The official Segment Python library (``segment-analytics-python``) pointed at our
``/v1`` routes: what it sends becomes one profile with the right traits, identifiers
and counters, and a messageId sent twice counts once.

The library stamps ``timestamp`` and ``sentAt`` from the machine clock, so these tests
run the API and the worker on the system clock with a short window.

The profile is read back with ``tests.support.tracking`` (the admin profile API, else
straight from Redis).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.segment_library import segment_library
from tests.support.stack import Stack
from tests.support.tracking import WRITE_KEYS, assert_person, basic, read_doc, total, wait_doc
from tests.support.values import ADMIN_TOKEN as TOKEN
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

FAST = {"clock": "system", "window_size": "200ms"}


@pytest.fixture
def analytics(stack: Stack) -> Iterator[tuple[Any, list[Any]]]:
    """The library's module-level client, aimed at our API and reset afterwards, and
    the errors its ``on_error`` reported."""
    with segment_library(stack.api_port) as client:
        yield client


@pytest.fixture
def live(stack: Stack) -> Stack:
    stack.start_api(write_keys=WRITE_KEYS, admin_token=TOKEN, **FAST)
    stack.start_worker(**FAST)
    return stack


def test_the_official_library_builds_one_profile(
    live: Stack, analytics: tuple[Any, list[Any]]
) -> None:
    lib, errors = analytics
    user, anon = f"sdk-{uuid.uuid4().hex[:8]}", f"anon-{uuid.uuid4().hex[:8]}"
    email = "Ada.Lovelace@Example.COM"

    # the anonymous visitor has events of its own before the alias
    lib.page(anonymous_id=anon, name="Pricing", properties={"path": "/pricing"})
    lib.identify(user, {"email": email, "plan": "pro", "name": "Ada"})
    lib.track(user, "Plan Upgraded", {"from": "free", "to": "pro"})
    lib.alias(anon, user)
    lib.page(user, name="Dashboard")
    lib.screen(user, name="Home")
    lib.group(user, "acme-1", {"name": "Acme Inc", "employees": 42})
    lib.flush()
    assert errors == []

    cid = wait_doc(live, f"user:{user}", {"Plan Upgraded": 1, "$page": 2, "$screen": 1})[
        "canonicalId"
    ]
    # the merge with the anonymous profile has happened once the anon id answers too
    wait_until(
        lambda: (d := read_doc(live, f"anon:{anon}")) and d["canonicalId"] == cid,
        message="the anonymous id to resolve to the user's profile",
    )
    live.wait_idle()
    doc = read_doc(live, f"user:{user}")
    assert doc is not None and doc["canonicalId"] == cid
    assert_person(doc, user=user, email=email, anon=anon, event="Plan Upgraded", pages=2, screens=1)
    assert doc["traits"]["name"]["v"] == "Ada"
    # every identifier, the lower-cased email included, finds the same profile
    for identifier in (f"email:{email.lower()}", f"anon:{anon}"):
        other = read_doc(live, identifier)
        assert other is not None and other["canonicalId"] == doc["canonicalId"]


def test_a_message_id_sent_twice_counts_once(live: Stack) -> None:
    user = f"dup-{uuid.uuid4().hex[:8]}"
    call = {
        "userId": user,
        "event": "Order Completed",
        "messageId": f"msg-{uuid.uuid4().hex}",
        "properties": {"total": 30},
    }
    headers = {"Content-Type": "application/json", **basic("wk1")}
    first = live.request("POST", "/v1/track", json.dumps(call).encode(), headers)
    again = live.request(
        "POST", "/v1/batch", json.dumps({"batch": [{**call, "type": "track"}]}).encode(), headers
    )
    assert (first.status, first.json()) == (200, {"success": True})
    assert (again.status, again.json()) == (200, {"success": True})
    # a second, distinct messageId to know when everything sent has been applied
    marker = {"userId": user, "event": "Marker", "messageId": f"msg-{uuid.uuid4().hex}"}
    live.request("POST", "/v1/track", json.dumps(marker).encode(), headers)

    live.wait_metric("dedup_hits", 1)
    wait_doc(live, f"user:{user}", {"Marker": 1})
    live.wait_idle()
    doc = read_doc(live, f"user:{user}")
    assert doc is not None
    assert total(doc, "Order Completed") == 1
    assert total(doc, "$track") == 2
