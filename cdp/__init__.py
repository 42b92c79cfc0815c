"""A real-time Customer Data Platform on Redis Streams.

An event's path through the package: ``cdp.events`` (wire formats and validation) →
``cdp.api`` (aiohttp, XADD to a partition stream) → ``cdp.pipeline`` (leases,
window buffer, watermark) → ``cdp.scripts`` + ``lua/`` (the atomic apply) → the keys
named in ``cdp.keys`` (profiles, identifiers, counters), read back by ``cdp.profiles``.
"""

__version__ = "0.1.0"
