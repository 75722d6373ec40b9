"""vmunet.inference (in progress)."""
