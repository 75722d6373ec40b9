"""The package version, in a leaf module every floor may import (``vmunet.__version__`` re-exports it)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
