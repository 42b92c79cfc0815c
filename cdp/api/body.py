"""Request bodies: read within body-timeout, inflated as they arrive, never past a limit.

The server runs with aiohttp's own decompression off (``cdp/api/server.py``), so
every handler reads its body through ``read_body``, which

- inflates ``Content-Encoding: gzip`` (``x-gzip``) and ``deflate`` (zlib, or the raw
  deflate some clients send) incrementally with zlib's ``max_length``, and stops one
  byte past ``limit``: a 400 MiB gzip bomb is a 413 that costs what a legitimate
  ``limit``-sized body costs. The body as sent is held to ``limit`` too;
- answers any other encoding (``br``, ``zstd``...) with 415, and a body that is not
  the gzip or deflate it claims with 400;
- keeps what it read on the request (``request[BODY]``: ``cdp.api.rejected`` records
  it when the request is refused);
- answers 408 when the whole body has not arrived within ``body-timeout`` (a
  slow-loris client), and raises ClientGone when the client hung up mid-body.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from cdp.api.appkeys import SETTINGS
from cdp.errors import BodyTimeout, ClientGone, EventRejected, EventTooLarge, UnsupportedEncoding

# The request key of the body read (cdp.api.rejected records a refused request's).
BODY = "cdp.body"

_ALIASES = {
    "": "identity",
    "identity": "identity",
    "gzip": "gzip",
    "x-gzip": "gzip",
    "deflate": "deflate",
}


def _too_large(limit: int, what: str = "body") -> EventTooLarge:
    return EventTooLarge(f"{what} is over the limit of {limit} bytes")


class Inflater:
    """Undoes one Content-Encoding, chunk by chunk, refusing output past ``limit``."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        name = content_encoding.strip().lower()
        if name not in _ALIASES:
            raise UnsupportedEncoding(
                f"Content-Encoding {content_encoding!r} is not supported: "
                "send gzip, deflate or an unencoded body"
            )
        self.encoding = _ALIASES[name]
        self.limit = limit
        self.received = 0  # bytes as sent
        self.inflated = 0  # bytes produced
        self._head = b""  # deflate: the first bytes, until zlib or raw is known
        self._zlib: zlib._Decompress | None = None
        if self.encoding == "gzip":
            self._zlib = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def feed(self, chunk: bytes) -> bytes:
        self.received += len(chunk)
        if self.received > self.limit:
            raise _too_large(self.limit)
        if self.encoding == "identity":
            self.inflated = self.received
            return chunk
        if self._zlib is None:  # deflate: a zlib header, else raw deflate
            self._head += chunk
            if len(self._head) < 2:
                return b""
            chunk, self._head = self._head, b""
            zlib_header = chunk[0] & 0x0F == 8 and int.from_bytes(chunk[:2], "big") % 31 == 0
            self._zlib = zlib.decompressobj(wbits=zlib.MAX_WBITS if zlib_header else -15)
        try:
            return self._inflate(chunk)
        except zlib.error as exc:
            raise EventRejected(f"the body is not valid {self.encoding}: {exc}") from None

    def _inflate(self, data: bytes) -> bytes:
        assert self._zlib is not None
        out = []
        while data:
            # One byte past the limit proves the body too large; zlib stops there.
            piece = self._zlib.decompress(data, self.limit - self.inflated + 1)
            self.inflated += len(piece)
            if self.inflated > self.limit:
                raise _too_large(self.limit, "the inflated body")
            out.append(piece)
            data = self._zlib.unconsumed_tail
            if self._zlib.eof and self._zlib.unused_data:
                if self.encoding != "gzip":
                    raise EventRejected("the body has data after its deflate stream")
                data = self._zlib.unused_data  # gzip allows several members in a row
                self._zlib = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        return b"".join(out)

    def finish(self) -> None:
        """The body ended: so must the compressed stream."""
        if self.encoding != "identity" and (self._zlib is None or not self._zlib.eof):
            raise EventRejected(f"the body ends before its {self.encoding} stream does")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body of ``request`` as the handler should see it (see the module docstring)."""
    if request.content_length is not None and request.content_length > limit:
        raise EventTooLarge(f"body is {request.content_length} bytes; the limit is {limit}")
    inflater = Inflater(request.headers.get("Content-Encoding", ""), limit)
    if request.content.is_eof():  # the whole body came with the headers: no timer to arm
        try:
            body = inflater.feed(request.content.read_nowait(-1))
        except ConnectionError:
            raise ClientGone("the client closed the connection mid-body") from None
        inflater.finish()
        request[BODY] = body  # for cdp:rejections, should the request be refused
        return body
    timeout_ms = request.app[SETTINGS].body_timeout_ms
    parts = []
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            while chunk := await request.content.readany():
                parts.append(inflater.feed(chunk))
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {timeout_ms} ms") from None
    except ConnectionError:  # aiohttp's "Connection lost" when the client hangs up
        raise ClientGone("the client closed the connection mid-body") from None
    inflater.finish()
    request[BODY] = body = b"".join(parts)
    return body
