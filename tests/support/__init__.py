"""What the tests share. Test modules and ``conftest.py`` files import from here; no test
module imports another test module or a ``conftest``.

- ``stack``: ``Stack``, the API and worker processes of an integration test.
- ``lua``: ``LuaHarness``, the Lua scripts on fakeredis; ``apply_in_order``.
- ``events``: ``StreamEvent`` builders and Hypothesis strategies of event sets.
- ``tracking``: the Segment-compatible routes' helpers (Basic auth, profile documents).
- ``interleave``: deterministic interleavings of segment evaluators.
- ``wait``: ``wait_until``, a condition polled with a deadline.
- ``values``: shared times, tokens and the partition count; ``ms`` / ``iso``.
"""
