"""vmunet.metrics (in progress)."""
