"""Moved: the audit trail is ``appliance.identity.audit`` (hash-chained); this name remains
so that older imports keep working."""

from __future__ import annotations

from appliance.identity.audit import cli_actor, record

__all__ = ["cli_actor", "record"]
