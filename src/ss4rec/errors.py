"""Errors the user can fix. The CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input, config or environment: the message says what, where and how to fix it."""


class ConfigError(UserError):
    """An unknown or invalid configuration key or value."""


class DataError(UserError):
    """A dataset that is missing, malformed or unusable."""


class TrainingGuardError(UserError):
    """Training stopped by a guard (non-finite loss or gradient, LR 0, stuck loss, frozen metrics).

    The message names the cause, where it happened (epoch, batch, optimiser step) and the fix;
    the last good checkpoint and a debug bundle are saved next to the run's checkpoints.
    """
