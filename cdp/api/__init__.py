"""The HTTP edge: validate, publish to a partition stream, answer only after the XADD."""
