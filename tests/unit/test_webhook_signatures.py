"""Webhook signatures against fixed vectors: the Standard Webhooks specification's own
(a ``whsec_`` secret), a plain secret keyed with its UTF-8 bytes, the legacy
``X-CDP-Signature``, and the secrets the API generates or refuses."""

from __future__ import annotations

import base64

import pytest

from cdp.errors import InvalidSubscription
from cdp.segments.webhooks import (
    parse_subscription,
    signature,
    signing_key,
    standard_signature,
)

PLAIN = "0123456789abcdef0123456789abcdef"
URL = "https://hooks.example.com/cdp"


def test_the_standard_webhooks_vector() -> None:
    # The vector of the specification's reference libraries (svix/standard-webhooks).
    got = standard_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_plain_secret_is_keyed_with_its_utf8_bytes() -> None:
    assert signing_key(PLAIN) == PLAIN.encode()
    got = standard_signature(PLAIN, "evt-1", 1759572000, b'{"a":1}')
    assert got == "v1,KR8MWXGhzVqSuL/8dtOocc7rPt5PYuC+7U/zf00BKlk="
    # The same bytes as a whsec_ secret sign the same.
    as_whsec = "whsec_" + base64.b64encode(PLAIN.encode()).decode()
    assert standard_signature(as_whsec, "evt-1", 1759572000, b'{"a":1}') == got


def test_the_legacy_signature_is_unchanged() -> None:
    got = signature(PLAIN, 1759572000, b'{"a":1}')
    assert got == "v1=4c18e61b855f5818fed98485dcc455ea6263b12653a2e9709767d7ce02b17941"


def test_unpadded_base64_is_accepted_as_the_libraries_do() -> None:
    key = bytes(range(25))  # 25 bytes: base64 with padding "=="
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("==")
    assert signing_key(padded) == signing_key(padded.rstrip("=")) == key


def test_generated_secrets_are_whsec_of_32_bytes_and_differ() -> None:
    a = parse_subscription({"url": URL}, "id1").secret
    b = parse_subscription({"url": URL}, "id2").secret
    assert a != b
    for secret in (a, b):
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret[len("whsec_") :], validate=True)) == 32


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_not*base64*at*all*at*all",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),  # too short a key
        "whsec_" + base64.b64encode(b"x" * 65).decode(),  # too long a key
    ],
)
def test_a_malformed_whsec_secret_is_refused(secret: str) -> None:
    with pytest.raises(InvalidSubscription, match="base64 of 24 to 64 bytes"):
        parse_subscription({"url": URL, "secret": secret}, "id1")


def test_whsec_secrets_of_24_to_64_bytes_and_plain_secrets_are_kept() -> None:
    for secret in (
        "whsec_" + base64.b64encode(b"k" * 24).decode(),
        "whsec_" + base64.b64encode(b"k" * 64).decode(),
        PLAIN,
    ):
        assert parse_subscription({"url": URL, "secret": secret}, "id1").secret == secret
