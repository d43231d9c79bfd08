"""A dependency-free progress bar: redrawn in place on a TTY, a few log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
  """Wraps an iterable: `for x in Progress(it, total=n, desc="embedding")`."""

  def __init__(self, iterable: Iterable[T], total: int | None = None, desc: str = "",
               unit: str = "it", stream=None, enabled: bool = True):
    self.iterable = iterable
    self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__")
                                                  else None)
    self.desc, self.unit = desc, unit
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.postfix = ""
    self.count = 0

  def set_postfix(self, text: str) -> None:
    self.postfix = text

  def _line(self, elapsed: float) -> str:
    rate = self.count / elapsed if elapsed > 0 else 0.0
    if self.total:
      width = 24
      filled = int(width * self.count / self.total)
      bar = "#" * filled + "." * (width - filled)
      eta = (self.total - self.count) / rate if rate > 0 else 0.0
      text = (f"{self.desc} [{bar}] {self.count}/{self.total} "
              f"{rate:.1f} {self.unit}/s {elapsed:.0f}s<{eta:.0f}s")
    else:
      text = f"{self.desc} {self.count} {self.unit} {rate:.1f} {self.unit}/s {elapsed:.0f}s"
    return f"{text} {self.postfix}".rstrip()

  def __iter__(self) -> Iterator[T]:
    start = last = time.perf_counter()
    # without a TTY (logs, CI): a line every 30 s and one at the end
    for item in self.iterable:
      yield item
      self.count += 1
      if not self.enabled:
        continue
      now = time.perf_counter()
      if self.tty and now - last > 0.2:
        self.stream.write("\r" + self._line(now - start) + "\033[K")
        self.stream.flush()
        last = now
      elif not self.tty and now - last > 30:
        self.stream.write(self._line(now - start) + "\n")
        last = now
    if self.enabled and self.count:
      line = self._line(time.perf_counter() - start)
      self.stream.write(("\r" + line + "\033[K\n") if self.tty else (line + "\n"))
      self.stream.flush()
