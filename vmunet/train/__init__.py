"""vmunet.train (in progress)."""
