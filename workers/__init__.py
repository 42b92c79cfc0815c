"""The worker program: one process reading, applying and acknowledging partition streams.

``workers.worker.Worker`` runs the loops (``reading``, ``ticking``, ``housekeeping``,
``roles``) over one shared ``state``, with ``dead_letters`` for what leaves unapplied;
``workers.run`` is the entry point (``cdp worker``, ``python -m workers``). The
library it drives (buffer, apply encoding, leases, scripts, segments) is in ``cdp``;
nothing in ``cdp`` imports ``workers`` except the CLI's ``worker`` command.
"""
