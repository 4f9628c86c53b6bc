"""The ground floor of the error hierarchy: every package may import this module.

`UserError` marks an error a user can cause and fix (a bad config value, a missing camera, an
unreachable arm, a corrupt file). Its message says what to do. The CLI catches this base and
prints the message as one line, without a traceback; a package marks its own error types by
subclassing it, so no package has to import the CLI to register them.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message is one line that says what to do."""


class ConfigError(UserError, ValueError):
    """A config file, override or value that does not fit the schema; the message names the key."""


__all__ = ["ConfigError", "UserError"]
