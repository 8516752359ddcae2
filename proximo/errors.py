"""The one exception type proximo raises for mistakes a user can fix."""


class ProximoError(Exception):
    """A user-facing error: its message names the bad value and how to fix it."""


class ConfigError(ProximoError, ValueError):
    """A config value is of the wrong type, out of range or inconsistent with another."""
