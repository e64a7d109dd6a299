"""The one error type for input a user got wrong: a config field, a flag, a file, a dataset.

Commands print a `UserError` as one `error:` line, without a traceback (dlearn/cli.py); anything
else is a bug and shows its traceback. Subclasses keep the built-in base a caller would catch
(`ConfigError` is also a `ValueError`), so library users can catch either.
"""

from __future__ import annotations


class UserError(Exception):
  """The user's input is at fault; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
  """A config field or flag has a value dlearn cannot run with."""


class DoesNotFit(UserError, MemoryError):
  """A run would need more memory than this machine has; the message says what would fit."""
