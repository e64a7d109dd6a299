"""What every command shares: flags defined only when the command runs (so that notebooks and
tests import the libraries freely), and any failure a user can cause printed as one `error:` line
that names the flag, file or config field and what to do, with no traceback."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from absl import app, flags

from dlearn import checkpoint
from dlearn.bookkeeping import NonFiniteError
from dlearn.data.image_folder import ImageFolderError
from dlearn.data.ts_format import TsFormatError
from dlearn.workdir import IncompatibleConfigError

# Failures whose messages already say what is wrong and what to do.
USER_ERRORS = (
  NonFiniteError,
  IncompatibleConfigError,
  checkpoint.CheckpointWriteError,
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
  TsFormatError,
  ImageFolderError,
  ValueError,
)


def fail(message) -> None:
  """Exits with status 1 after one `error:` line (the message's own lines indented below it)."""
  sys.exit(f'error: {str(message).strip()}')


def _flag_error(error: Exception, argv: list[str]) -> str:
  """A flag parsing failure in the user's words: config overrides name their field."""
  text = str(error).strip().strip('\'"').replace('\\n', ' ').replace("\\'", "'")
  text = re.sub(r'\s+', ' ', text)
  if isinstance(error, (AttributeError, KeyError)):
    field = text.split("'")[1] if text.count("'") >= 2 else text
    overrides = [a for a in argv if a.startswith('--config.') and field in a.split('=')[0]]
    where = overrides[0].split('=')[0] if overrides else f'--config.{field}'
    hint = text[text.find('Did you mean') :] if 'Did you mean' in text else ''
    return (
      f'{where}: the config has no field {field!r}. {hint} The fields are those of the config '
      'file and dlearn/configs.py:base().'
    ).replace('  ', ' ')
  return f'{text} (--help lists the flags).'


def run(main: Callable, define_flags: Callable[[], None]) -> None:
  """Defines the command's flags, parses the command line and runs `main(argv)` under absl."""
  define_flags()

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      fail(_flag_error(e, argv))

  app.run(main, flags_parser=parse)
