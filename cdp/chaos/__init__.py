"""The fault suite: a history-and-checker harness in the spirit of Jepsen.

A load client (``client``) sends a bounded population's calls (``workload``) through
the real HTTP API and records every attempt and answer (``history``), while a nemesis
(``nemesis``) kills, stops and starves the real processes of a stack of its own
(``cluster``: redis-server with AOF, the API, workers). At the end the checker
(``checker``, ``segcheck``) reads back what Redis holds (``state``) and compares it
with what was acknowledged and with the reference model (``model``). ``runner`` ties
the steps together; ``report`` is ``cdp chaos``.
"""
