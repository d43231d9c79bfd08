"""CPU defaults that must be in the environment before the process starts.

glibc reads its malloc settings at start-up, so an entry point that wants them re-executes
itself once with them set (`apply()`, called before anything else is imported). Measured
on the 2-core development machine (benchmarks/README.md): XLA's CPU step churns large
buffers, and keeping glibc from returning memory to the kernel (and from serving large
blocks with mmap) avoids a page fault on every touch of a fresh buffer: the ResNet-50
stage-1 step goes from about 2.6 s to 2.2 s. PyTorch gains as much, so benchmarks compare
both under the same environment.

`train_step_compiler_options` gives XLA options for the training step of a bottleneck ResNet
(50, 101) on CPU, passed to that step's `jax.jit` so nothing else in the process changes:
matrix products (the 1x1 convolutions) by oneDNN instead of YNNPACK. ResNet-50 224x224,
interleaved A/B: 2107 against 2412 ms per step (median of 3; 2092 against 2252 in another
run). The trace does not single out the gain (XLA's layout copies for the 1x1 weight
gradients remain). Not for ResNet-18 (536 against 555 ms, within noise, and XLA cannot
store a step with oneDNN thunks in the persistent compilation cache: the demo's whole run
took 224 instead of 206 s) nor transformers (the R2Former's attention products are 22 %
slower with oneDNN).

Overrides: VGSSL_CPU_TUNING=0 disables both; a GLIBC_TUNABLES or MALLOC_* variable already
set by the user wins over the malloc settings, an XLA_FLAGS choosing YNNPACK or oneDNN
fusions over the step options. Skipped when JAX_PLATFORMS names an accelerator or a CUDA plugin is
installed (GPU hosts manage device memory themselves).
"""

from __future__ import annotations

import importlib.util
import os
import sys

MARK = "VGSSL_CPU_TUNING_APPLIED"
# no arena per thread, no mmap for large blocks, never trim the heap; transparent huge
# pages for the heap (fewer page faults and TLB misses)
GLIBC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                  "glibc.malloc.trim_threshold=68719476736:glibc.malloc.hugetlb=1")


# XLA debug options by name (enum lists as LIBRARY_FUSION_TYPE_* names): oneDNN takes the
# dots, YNNPACK keeps the convolutions and reductions (its defaults, less individual_dot)
ONEDNN_DOTS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
    "xla_cpu_experimental_ynn_fusion_type": ("LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
                                             "LIBRARY_FUSION_TYPE_REDUCE"),
}


def _accelerator_host() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "").lower()
  if platforms and "cpu" not in platforms.split(","):
    return True
  return any(importlib.util.find_spec(m) is not None
             for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin"))


def wanted() -> dict[str, str]:
  """The variables to add ({} when tuning is off, already applied or set by the user)."""
  if os.environ.get("VGSSL_CPU_TUNING", "1") == "0" or os.environ.get(MARK) or \
      _accelerator_host():
    return {}
  if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
    return {}
  return {"GLIBC_TUNABLES": GLIBC_TUNABLES}


def apply() -> None:
  """Re-executes this process once with the CPU defaults in its environment (no-op when
  nothing is wanted). Must run before jax or anything allocating much is imported."""
  extra = wanted()
  if not extra:
    return
  os.environ.update(extra)
  os.environ[MARK] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))


# XLA's own convolutions, no YNNPACK library fusions: VGG16's 3x3 convolutions on large
# maps (VICReg step, 112x112, 8 pairs, one process: 2.8 against 5.4-6.3 s per step), CCT's
# 7x7 tokenizer (384x384, 4 pairs: 8.5-8.7 against 9.9-11.0 s); no gain for ResNet-50)
XLA_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# the option sets a network may ask for by name (models.backbones: a family's `cpu_step`)
STEP_OPTIONS = {"onednn_dots": ONEDNN_DOTS, "xla_convolutions": XLA_CONVOLUTIONS}


def train_step_compiler_options(wanted_by_network: str, platform: str) -> dict | None:
  """XLA options for the training step's `jax.jit` (None: XLA's defaults): the set the
  network names (STEP_OPTIONS; "" none), only on CPU, and not when the user turned the CPU
  defaults off or chose XLA's CPU library fusions in XLA_FLAGS."""
  flags = os.environ.get("XLA_FLAGS", "")
  if (platform != "cpu" or not wanted_by_network or os.environ.get("VGSSL_CPU_TUNING", "1") == "0"
      or "ynn_fusion_type" in flags or "onednn" in flags):
    return None
  return dict(STEP_OPTIONS[wanted_by_network])
