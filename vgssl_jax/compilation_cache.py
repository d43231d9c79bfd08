"""JAX's persistent compilation cache, on by default for the entry points.

A run compiles the same programs as the run before it whenever the shapes and settings
match (a second demo run, a resumed run, the evaluation after training, the test suite's
many small runs): with the cache they are read back from disk instead of recompiled.

Where: VGSSL_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/vgssl_jax/jax, else
~/.cache/vgssl_jax/jax. VGSSL_COMPILATION_CACHE=0 switches it off. The folder holds
compiled code that is run as it is: keep it private (JAX's own advice).
"""

from __future__ import annotations

import logging
import os

ENV_SWITCH = "VGSSL_COMPILATION_CACHE"
ENV_DIR = "VGSSL_COMPILATION_CACHE_DIR"
# programs that compile faster than this are not worth a file (JAX's default is 1 s; the
# steps and searches of small runs take about as long)
MIN_COMPILE_SECS = 0.5


def cache_dir() -> str | None:
  """The folder the cache uses, or None when switched off."""
  if os.environ.get(ENV_SWITCH, "1") == "0":
    return None
  if os.environ.get(ENV_DIR):
    return os.path.abspath(os.path.expanduser(os.environ[ENV_DIR]))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "vgssl_jax", "jax")


def enable() -> str | None:
  """Points JAX at the cache folder (before the first compilation); returns the folder,
  or None when off or not writable (then the run compiles as usual, with a warning)."""
  path = cache_dir()
  if path is None:
    logging.info("compilation cache off (%s=0)", ENV_SWITCH)
    return None
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f"{path} is not writable")
  except OSError as e:
    logging.warning("compilation cache off: cannot use %s (%s); set %s to a folder you can "
                    "write, or %s=0 to silence this", path, e, ENV_DIR, ENV_SWITCH)
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("compilation cache: %s (%s=0 switches it off)", path, ENV_SWITCH)
  return path
