"""Shared by the benchmark scripts: environment, medians and the JSON report."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def setup() -> None:
  """The CPU defaults of the entry points (re-executes once), so that benchmarks measure
  what training runs with; VGSSL_CPU_TUNING=0 measures glibc's defaults."""
  from vgssl_jax import cpu_env
  cpu_env.apply()


def median(values) -> float:
  return float(statistics.median(values))


def peak_host_memory_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment() -> dict:
  import jax
  dev = jax.devices()[0]
  return {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
          "platform": dev.platform, "device_kind": dev.device_kind,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__}


def report(summary: str, result: dict, out: str | None) -> None:
  """Prints the one summary line and writes the JSON."""
  print(summary, flush=True)
  if out:
    with open(out, "w") as f:
      json.dump({**result, "environment": environment()}, f, indent=1)
