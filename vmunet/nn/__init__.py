"""vmunet.nn (in progress)."""
