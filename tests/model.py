"""Moved to ``cdp.chaos.model`` (the fault suite's checker uses it too); import it from
there. This re-export only keeps older imports working while branches merge."""

from cdp.chaos.model import Model, Profile, canonical, snapshot

__all__ = ["Model", "Profile", "canonical", "snapshot"]
