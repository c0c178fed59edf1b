"""Errors the user can fix. The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input, config or environment: the message says what, where and how to fix it."""


class ConfigError(UserError):
    """An unknown or invalid configuration key or value."""


class DataError(UserError):
    """A dataset that is missing, malformed or unusable."""
