"""Logging of the entry points: one format for every line, on stderr and in the run's
`<workdir>/info.log` (written by process 0 only), with the reason a run ended in both.

`quiet_third_party()` runs first, before the libraries are imported: faiss's loader and
jax's backend probing report at INFO what is not news. `setup(workdir)` replaces whatever
handlers an earlier import installed (absl's own format included) by ours. `to_files`
writes a line to the log files only, for messages the caller also prints itself (the
one-line errors, a traceback that Python prints on stderr).
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
FILE_NAME = "info.log"
# loggers whose INFO lines are noise here: backend probing (jax), every checkpoint step
# (orbax, through absl), which CPU builds faiss's loader could not load
THIRD_PARTY = ("jax", "absl", "faiss")


def quiet_third_party() -> None:
  for name in THIRD_PARTY:
    logging.getLogger(name).setLevel(logging.WARNING)


class _QuietReadOnly(logging.Filter):
  """orbax warns "Given directory is read only" whenever a checkpoint is only read (the
  evaluation runner, the export): expected here, so not shown."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "is read only" not in record.getMessage()


class _QuietFailedReads(logging.Filter):
  """A restore that fails (a damaged checkpoint) leaves orbax's other read tasks with
  errors nobody awaits; asyncio logs each with a traceback whenever it is collected, even
  after the failure was reported in one clear line. Those echoes are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("never retrieved" in message and "async_deserialize" in message)


def install_filters() -> None:
  """The filters of third-party noise above (idempotent)."""
  for name, cls in (("absl", _QuietReadOnly), ("asyncio", _QuietFailedReads)):
    logger = logging.getLogger(name)
    if not any(isinstance(f, cls) for f in logger.filters):
      logger.addFilter(cls())


def setup(workdir: str | None, write_file: bool = True) -> None:
  """INFO and above to stderr, and to <workdir>/info.log when `write_file` (process 0)."""
  quiet_third_party()
  install_filters()
  formatter = logging.Formatter(FORMAT, DATE_FORMAT)
  handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
  if workdir and write_file:
    os.makedirs(workdir, exist_ok=True)
    handlers.append(logging.FileHandler(os.path.join(workdir, FILE_NAME)))
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  for handler in list(root.handlers):
    root.removeHandler(handler)
  for handler in handlers:
    handler.setFormatter(formatter)
    root.addHandler(handler)


def to_files(message: str, level: int = logging.ERROR) -> None:
  """`message` as one record in the log files only (not on stderr)."""
  record = logging.LogRecord("vgssl_jax", level, __file__, 0, message, None, None)
  for handler in logging.getLogger().handlers:
    if isinstance(handler, logging.FileHandler):
      handler.handle(record)
      handler.flush()


def append(workdir: str, message: str, level: int = logging.ERROR) -> None:
  """`message` appended to <workdir>/info.log before logging is set up (errors in the
  command line itself); nothing happens when the folder cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(workdir, FILE_NAME))
  except OSError:
    return
  handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
  handler.handle(logging.LogRecord("vgssl_jax", level, __file__, 0, message, None, None))
  handler.close()
