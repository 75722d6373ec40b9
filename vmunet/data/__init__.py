"""vmunet.data (in progress)."""
