"""vmunet.ops (in progress)."""
