"""Exceptions shared by every floor of the package.

``VmunetUserError`` marks a mistake the user can fix (a bad path, a bad
config key, an unreadable file). The CLI prints its message in one line and
exits with status 2; it never prints a traceback for it. Subclasses also
derive from the built-in exception a Python caller would expect.
"""

from __future__ import annotations

__all__ = ["VmunetUserError", "InputFileError", "ConfigError"]


class VmunetUserError(Exception):
    """A mistake in what the user gave us; the message says what and how to fix it."""


class InputFileError(VmunetUserError, ValueError):
    """A file that cannot be used: missing, unreadable, corrupt, wrong content.

    Args:
        path: the offending file.
        reason: what is wrong and what was expected.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(VmunetUserError, ValueError):
    """A configuration value or key that is wrong; the message names the key."""
