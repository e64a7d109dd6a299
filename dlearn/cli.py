"""What every command shares: flags defined only when the command runs (so that notebooks and
tests import the libraries freely), and any failure a user can cause printed as one `error:` line
that names the flag, file or config field and what to do, with no traceback."""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags

from dlearn.errors import ConfigError, UserError

# Failures whose messages already say what is wrong and what to do: dlearn's own for the user's
# input (config fields, flags, files, datasets, checkpoints of another shape, a non-finite loss),
# and the operating system's for paths. Anything else is a bug and keeps its traceback.
USER_ERRORS = (
  UserError,
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
)


def fail(message) -> None:
  """Exits with status 1 after one `error:` line (the message's own lines indented below it)."""
  sys.exit(f'error: {str(message).strip()}')


def _last_line(text: str) -> str:
  """The last non-empty line: the error itself where a message embeds a traceback."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else str(text)


def _flag_error(error: Exception, argv: list[str]) -> str:
  """A flag parsing failure in the user's words: config overrides name their field."""
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: no such config field
    text = re.sub(r'\s+', ' ', str(error).replace('\\n', ' ').replace('\\', ''))
    field = re.search(r'[A-Za-z_][A-Za-z0-9_]*', text)
    field = field.group(0) if field else text
    overrides = [
      a.split('=')[0]
      for a in argv
      if a.startswith('--config.') and field in a.split('=')[0].removeprefix('--').split('.')
    ]
    where = overrides[0] if overrides else f'--config.{field}'
    hint = text[text.find('Did you mean') :].rstrip('\'" ') if 'Did you mean' in text else ''
    return (
      f'{where}: the config has no field {field!r}. {hint} The fields are those of the config '
      'file and dlearn/configs.py:base().'
    ).replace('  ', ' ')
  message = str(error)
  if 'Traceback' in message:  # a config file that raised: its own error, without the traceback
    flag = message.split(':', 1)[0]
    return f'{flag}: {re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", _last_line(message))}'
  return f'{message.strip()} (--help lists the flags)'


def config_or_fail(config_flag_value, argv: list[str]):
  """The --config flag's config, or one error line when its file could not be loaded (which
  ml_collections reports only when the config is first used)."""
  try:
    config_flag_value.model  # noqa: B018  (a config that failed to load raises on any access)
  except OSError as e:
    given = next((a for a in argv if a.startswith('--config=')), '--config')
    fail(f'{given}: the config file could not be loaded: {_last_line(e)}')
  return config_flag_value


def field_values(items: list[str], flag: str) -> dict:
  """['a.b=1', 'c=x'] → {'a.b': 1, 'c': 'x'} (Python literals where they parse, else text)."""
  values = {}
  for item in items:
    field, equals, text = item.partition('=')
    if not equals or not field:
      raise ConfigError(f'{flag}={item}: write FIELD=VALUE, e.g. {flag}=fast_cnn.tta_level=0.')
    try:
      values[field] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      values[field] = text
  return values


def define_workdir_flags(set_example: str) -> None:
  """The flags of a command that reads a trained work directory: --workdir, --data_dir, --set."""
  flags.DEFINE_string('workdir', None, 'Work directory of a training run.', required=True)
  flags.DEFINE_string('data_dir', None, 'tfds data_dir (default: the one trained with).')
  flags.DEFINE_multi_string(
    'set',
    [],
    f"FIELD=VALUE: change a field of the run's config for this command, e.g. {set_example}; a "
    'field that changes the shapes of the checkpoint cannot be restored.',
  )


def default_compilation_cache() -> str:
  return os.environ.get('JAX_COMPILATION_CACHE_DIR', '~/.cache/dlearn/jax')


def use_compilation_cache(directory: str) -> None:
  """Keeps every compiled program in `directory` (JAX's persistent compilation cache), so that a
  program compiled once is loaded, not compiled again, by later runs and commands on the same
  machine: the folds of a cross-validation, evaluate and predict after training."""
  if not directory:
    return
  import jax  # here: `prepare` and the pipeline's workers need no JAX

  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
  # every program: a small dataset's many short compilations add up to most of its run
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def run(main: Callable, define_flags: Callable[[], None]) -> None:
  """Defines the command's flags, parses the command line and runs `main(argv)` under absl."""
  define_flags()
  flags.DEFINE_string(
    'compilation_cache',
    default_compilation_cache(),
    "Directory of JAX's persistent compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else "
    '~/.cache/dlearn/jax); empty: compile every program afresh.',
  )

  def parse(argv):
    try:
      argv = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      fail(_flag_error(e, argv))
    use_compilation_cache(flags.FLAGS.compilation_cache)
    return argv

  app.run(main, flags_parser=parse)
