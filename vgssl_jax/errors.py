"""Errors that the entry points report as one line, without a traceback."""

from data_pipelines.formats import FilenameFormatError
from data_pipelines.images import ImageReadError
from data_pipelines.places import DatasetError


class ConfigError(ValueError):
  """An impossible or unknown setting."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Preempted(RuntimeError):
  """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the same command resumes."""


# What a user can fix: reported as "error: <message>" by the command-line entry points.
USER_ERRORS = (ConfigError, DatasetError, FilenameFormatError, ImageReadError, FileExistsError,
               TrainingDiverged, Preempted)


def check_choice(key: str, value, allowed) -> None:
  """ConfigError naming setting `key` unless `value` is one of `allowed`."""
  if value not in allowed:
    raise ConfigError(f"{key}={value!r} is not valid; expected one of "
                      f"{', '.join(repr(a) if a == '' else str(a) for a in allowed)} (set it with "
                      f"--config.{key}=...).")
