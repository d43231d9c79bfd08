"""Errors that the entry points report as one line, without a traceback."""

from data_pipelines.formats import FilenameFormatError
from data_pipelines.images import ImageReadError
from data_pipelines.places import DatasetError


class ConfigError(ValueError):
  """An impossible or unknown setting."""


# What a user can fix: reported as "error: <message>" by the command-line entry points.
USER_ERRORS = (ConfigError, DatasetError, FilenameFormatError, ImageReadError, FileExistsError)
