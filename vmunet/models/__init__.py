"""vmunet.models (in progress)."""
