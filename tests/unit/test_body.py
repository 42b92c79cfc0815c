"""cdp.api.body.Inflater: request bodies inflated chunk by chunk, never past the limit.

A compression bomb must cost no more than a legitimate body of the limit's size: the
inflater stops one byte past the limit however large the bomb would grow."""

from __future__ import annotations

import gzip
import zlib

import pytest

from cdp.api.body import Inflater
from cdp.errors import EventRejected, EventTooLarge, UnsupportedEncoding

LIMIT = 32 * 1024
BOMB_SIZE = 64 << 20  # 64 MiB of whitespace, a few tens of KB compressed


def compress(data: bytes, wbits: int, repeat: int = 1) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits, 9, zlib.Z_RLE)
    return b"".join([packer.compress(data) for _ in range(repeat)] + [packer.flush()])


def bomb(wbits: int) -> bytes:
    return compress(b" " * (1 << 20), wbits, repeat=BOMB_SIZE >> 20)


def feed_all(inflater: Inflater, body: bytes, chunk: int = 65536) -> bytes:
    out = b"".join(inflater.feed(body[i : i + chunk]) for i in range(0, len(body), chunk))
    inflater.finish()
    return out


@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("deflate", -15)]
)
def test_a_bomb_is_refused_after_inflating_one_byte_past_the_limit(
    encoding: str, wbits: int
) -> None:
    body = bomb(wbits)
    assert len(body) < LIMIT * 4  # small on the wire...
    inflater = Inflater(encoding, limit=len(body) + LIMIT)
    with pytest.raises(EventTooLarge):
        feed_all(inflater, body)
    # ... and never inflated further than the limit allows.
    assert inflater.inflated <= inflater.limit + 1


@pytest.mark.parametrize(
    ("encoding", "packed"),
    [
        ("gzip", gzip.compress(b'{"a": 1}', mtime=0)),
        ("GZip", gzip.compress(b'{"a": ', mtime=0) + gzip.compress(b"1}", mtime=0)),  # two members
        ("deflate", zlib.compress(b'{"a": 1}')),  # zlib-wrapped, as RFC 9110 says
        ("deflate", compress(b'{"a": 1}', -15)),  # raw, as some clients send
        ("", b'{"a": 1}'),
        ("identity", b'{"a": 1}'),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 65536])
def test_valid_bodies_come_out_whole_whatever_the_chunking(
    encoding: str, packed: bytes, chunk: int
) -> None:
    assert feed_all(Inflater(encoding, LIMIT), packed, chunk) == b'{"a": 1}'


def test_a_body_exactly_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    exact = b"x" * LIMIT
    assert feed_all(Inflater("gzip", LIMIT), gzip.compress(exact)) == exact
    with pytest.raises(EventTooLarge):
        feed_all(Inflater("gzip", LIMIT), gzip.compress(exact + b"x"))
    with pytest.raises(EventTooLarge):
        feed_all(Inflater("identity", LIMIT), exact + b"x")


def test_the_body_as_sent_is_held_to_the_limit_too() -> None:
    # Random bytes do not compress: the gzip is larger than its content's limit.
    noise = gzip.compress(bytes(range(256)) * (LIMIT // 256 + 64), compresslevel=0)
    inflater = Inflater("gzip", LIMIT)
    with pytest.raises(EventTooLarge):
        feed_all(inflater, noise)
    assert inflater.received <= LIMIT + 65536


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br", "gzip, gzip"])
def test_other_encodings_are_a_415(encoding: str) -> None:
    with pytest.raises(UnsupportedEncoding) as caught:
        Inflater(encoding, LIMIT)
    assert caught.value.status == 415
    assert repr(encoding) in str(caught.value)


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b'{"batch": "this is not gzip"}'),
        ("gzip", b"\x1f\x8b\x08\x00garbage"),
        ("gzip", gzip.compress(b'{"a": 1}', mtime=0)[:-6]),  # cut short
        ("gzip", b""),
        ("deflate", zlib.compress(b"{}") + b"trailing"),
        ("deflate", b"\x78"),
    ],
)
def test_a_body_that_is_not_what_it_claims_is_a_400(encoding: str, body: bytes) -> None:
    with pytest.raises(EventRejected) as caught:
        feed_all(Inflater(encoding, LIMIT), body)
    assert caught.value.status == 400
