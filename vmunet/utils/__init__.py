"""Small helpers shared by every floor: atomic file writes, logging set-up."""

from vmunet.utils.io import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
