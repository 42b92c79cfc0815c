"""From partition streams to applied events: leases, the window buffer, the apply."""
