"""cdp/identity.py: typed, normalised identifiers, routing ids and partitions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.identity import BLOCKED_VALUES, is_blocked, partition_of, routing_id, typed_identifiers


def test_identifiers_are_typed_in_user_email_anon_order():
    assert typed_identifiers("u1", "a1", "u1@example.com") == [
        "user:u1",
        "email:u1@example.com",
        "anon:a1",
    ]


def test_email_is_lower_cased_and_trimmed():
    assert typed_identifiers(None, None, "  John.Doe@Example.COM \t") == [
        "email:john.doe@example.com"
    ]


def test_user_and_anonymous_ids_are_trimmed_but_keep_their_case():
    assert typed_identifiers(" User-123 ", " Anon-XY ", None) == ["user:User-123", "anon:Anon-XY"]


def test_missing_identifiers_are_left_out():
    assert typed_identifiers(None, None, None) == []
    assert typed_identifiers(None, "a1", None) == ["anon:a1"]


@pytest.mark.parametrize(
    "value",
    [
        "null",
        "NULL",
        " Null ",
        "undefined",
        "0",
        "-1",
        "",
        "  ",
        "anonymous",
        "Anonymous",
        "unknown",
        "none",
        "nil",
        "[object Object]",
    ],
)
def test_blocked_placeholder_values_are_ignored(value):
    assert is_blocked(value)
    assert typed_identifiers(value, value, value) == []
    assert typed_identifiers(value, "a1", value) == ["anon:a1"]


@pytest.mark.parametrize("value", ["0a", "nullable", "anonymous-7", "00", "u-null"])
def test_values_that_only_look_like_placeholders_are_kept(value):
    assert not is_blocked(value)
    assert typed_identifiers(value, None, None) == ["user:" + value]


def test_an_extra_blocked_set_replaces_the_default():
    blocked = BLOCKED_VALUES | {"guest"}
    assert typed_identifiers("Guest", "a1", None, blocked) == ["anon:a1"]
    assert typed_identifiers("Guest", "a1", None) == ["user:Guest", "anon:a1"]


def test_routing_id_prefers_user_then_anonymous_then_email():
    assert routing_id("u1", "a1", "x@example.com") == "user:u1"
    assert routing_id(None, "a1", "x@example.com") == "anon:a1"
    assert routing_id(None, None, " X@Example.com ") == "email:x@example.com"


def test_routing_id_skips_empty_values():
    assert routing_id("  ", " a1 ", None) == "anon:a1"
    assert routing_id("", "", "x@example.com") == "email:x@example.com"


def test_routing_id_skips_blocked_placeholder_values():
    assert routing_id("null", "a1", None) == "anon:a1"


def test_partition_is_crc32_of_the_routing_id():
    # The standard CRC-32 check value (IEEE 802.3): 0x414FA339.
    assert partition_of("The quick brown fox jumps over the lazy dog", 2**32) == 0x414FA339
    # Pinned: these must never change across releases, or events of one person
    # would be split over two partitions after an upgrade.
    assert partition_of("user:user-123", 16) == 5
    assert partition_of("anon:anon-456", 16) == 0
    assert partition_of("email:user@example.com", 16) == 4
    assert partition_of("user:u1", 16) == 8
    assert partition_of("user:u1", 7) == 4


def test_partition_of_the_seed_user_matches_its_routing_id():
    rid = routing_id("user-123", "anon-456", "user@example.com")
    assert partition_of(rid, 16) == partition_of("user:user-123", 16) == 5


@given(st.text(max_size=200), st.integers(min_value=1, max_value=1024))
def test_partition_is_in_range_and_deterministic(routing, partitions):
    p = partition_of(routing, partitions)
    assert 0 <= p < partitions
    assert partition_of(routing, partitions) == p
