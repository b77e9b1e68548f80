"""Errors a user can cause. The CLI prints them as one line and exits with their status."""


class UserError(Exception):
    """Bad input from the user (path, data, config): one clear line, exit status 2."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid config value, type or key; the message names the dotted field."""


class DataError(UserError):
    """Unusable input data (missing, unreadable, inconsistent files or shards)."""
