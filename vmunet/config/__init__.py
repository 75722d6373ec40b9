"""vmunet.config (in progress)."""
