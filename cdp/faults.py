"""Named fault points, for the tests that kill a process at a given step.

``point("merge:absorbed")`` does nothing unless the environment variable
``CDP_FAULT_POINT`` names that point: then the process SIGKILLs itself there, as a
crash (no ``finally``, no cleanup, no flush) at exactly that step would. The tests of
the resumable protocols (the cross-slot merge journal, the outbox relay) start a real
worker process with the variable set, let it die at the point, and show that another
process finishes the work. Unset in production: the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CDP_FAULT_POINT"


def point(name: str) -> None:
    """Die here (SIGKILL) when ``CDP_FAULT_POINT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
