"""The one parallelism path: jit over a 1-D ("data",) mesh of Auto axis type.

The batch is sharded over "data" and the state replicated, so BatchNorm and batch
losses see the global batch (= the original's SyncBN and all-gather).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vgssl_jax.errors import ConfigError


def initialize_distributed(dc) -> None:
  """jax.distributed.initialize() for multi-host runs: from the `distributed` config when a
  coordinator address is given, else from SLURM's variables when the job has several tasks
  (JAX detects the cluster). Single-process runs skip it."""
  explicit = bool(dc.coordinator_address)
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if not (explicit or slurm):
    return
  # CPU devices of different processes exchange collectives over gloo (a no-op for the
  # collectives of GPUs and TPUs, which have their own)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=dc.coordinator_address,
                               num_processes=dc.num_processes, process_id=dc.process_id)
  else:
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A ("data",) mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  n = len(devices) if not num_devices else num_devices
  if n > len(devices):
    raise ConfigError(f"the mesh asks for {n} devices but only {len(devices)} are visible "
                     f"({devices[0].platform}); lower num_devices or run on more devices.")
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def shard_batch(batch, mesh: Mesh):
  """Host-local batch (NumPy pytree, this process's rows) -> global arrays sharded over "data"."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def check_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n} (e.g. {max(n, batch_size // n * n)}).")
