"""Ctrl-C before a run handles it: the entry points install `stop_quietly` first thing, so
a press while the libraries load or an evaluation runs ends the process at once with exit
status 130 and one line, not a KeyboardInterrupt traceback from inside an import (or an
"Exception ignored in ..." from a garbage-collection callback). The training loop installs
its own handling while it trains (training.loop: a checkpoint at the next step).
"""

from __future__ import annotations

import os
import signal

from vgssl_jax import logs

MESSAGE = ("interrupted (Ctrl-C): stopped at once; the checkpoints written so far are kept, run "
           "the same command to resume from the last one.")


def exit_now(message: str = MESSAGE) -> None:
  """Ends the process at once (status 130) after one line on stderr and in the log files:
  no clean-up that could hang or raise."""
  logs.to_files(message)
  os.write(2, f"\n{message}\n".encode())
  os._exit(130)


def stop_quietly() -> None:
  """SIGINT ends the process at once (see the module docstring). Main thread only."""
  signal.signal(signal.SIGINT, lambda signum, frame: exit_now())
