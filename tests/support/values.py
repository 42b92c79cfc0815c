"""Values the tests share: their instants, the admin token and write key they configure,
and the partition count.

Times are the seed's day: ``T0`` is 2025-10-04T10:00:00Z (``T0_MS`` in epoch
milliseconds), when the examples' events happen; ``NOW_MS`` is the day after, the fixed
"now" of the Lua harness.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cdp.settings import Settings

T0 = "2025-10-04T10:00:00Z"
T0_MS = 1_759_572_000_000  # T0
NOW_MS = 1_759_622_400_000  # 2025-10-05T00:00:00Z

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
WRITE_KEY = "wk1"

# The partition count every process runs with unless a test says otherwise: the
# settings' default (the stack fixture starts its processes with it).
PARTITIONS = Settings().partitions


def ms(iso: str) -> int:
    """Epoch milliseconds of an ISO-8601 instant (``Z`` or an offset)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def iso(ms_value: int) -> str:
    """The ISO-8601 UTC instant (``Z``) of epoch milliseconds."""
    return datetime.fromtimestamp(ms_value / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
