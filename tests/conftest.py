"""Shared fixtures: a tiny synthetic dataset and a tiny config (small images, narrow nets)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Tests compile many tiny programs once: XLA's cheapest optimisation level makes them
# compile about 3x faster, which the suite's time is mostly made of (set before jax loads;
# the runs the tests start inherit it). Comparisons inside a test use the same level.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

from data_pipelines import synthetic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_SYNTHETIC = synthetic.SyntheticConfig(
    seed=1, image_size=(32, 48), streets=(2, 1, 1), street_length_m=80.0,
    queries_per_street=(16, 8, 8), px_per_m=4.0)


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """One compilation cache for the whole session, shared by the xdist workers and every
  run started as a subprocess (they compile the same tiny steps again and again)."""
  from vgssl_jax import compilation_cache
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the session's folder, above the workers' own
  os.environ[compilation_cache.ENV_DIR] = str(base / "jax_compilation_cache")
  os.environ.pop(compilation_cache.ENV_SWITCH, None)
  compilation_cache.enable()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
  """A datasets root holding the tiny synthetic dataset under `synthetic/`."""
  root = str(tmp_path_factory.mktemp("datasets"))
  synthetic.ensure_dataset(root, "synthetic", TINY_SYNTHETIC)
  return root


def tiny_config(root: str):
  """A config that trains a narrow ResNet-18 on the tiny synthetic set in seconds."""
  from vgssl_jax.config import base_config
  c = base_config()
  c.data.root = root
  c.data.name = "synthetic"
  c.data.image_size = (32, 48)
  c.data.synthetic.update(dict(TINY_SYNTHETIC.__dict__))
  c.model.backbone = "resnet18conv4"
  c.model.width = 8
  c.model.fc_output_dim = 32
  c.model.n_layers = 2
  c.model.projection_size = 64
  c.train.epochs = 1
  c.train.batch_size = 8
  c.train.lr = 1e-3
  c.train.queries_per_epoch = 16
  c.train.infer_batch_size = 16
  c.train.val_every = 0
  c.eval.before = True
  return c


def tiny_overrides(root: str) -> list[str]:
  """tiny_config as command-line overrides of configs/demo.py."""
  s = TINY_SYNTHETIC
  return [f"--config.data.root={root}", "--config.data.image_size=32,48",
          f"--config.data.synthetic.image_size={s.image_size[0]},{s.image_size[1]}",
          f"--config.data.synthetic.seed={s.seed}",
          "--config.data.synthetic.streets=" + ",".join(map(str, s.streets)),
          f"--config.data.synthetic.street_length_m={s.street_length_m}",
          "--config.data.synthetic.queries_per_street=" + ",".join(map(str, s.queries_per_street)),
          f"--config.data.synthetic.px_per_m={s.px_per_m}",
          "--config.model.width=8", "--config.model.fc_output_dim=32",
          "--config.model.projection_size=64", "--config.train.epochs=1",
          "--config.train.batch_size=8", "--config.train.queries_per_epoch=16",
          "--config.train.infer_batch_size=16"]


def run_python(args: list[str], devices: int = 1, timeout: int = 600, cwd: str = REPO,
               env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python args...` in a fresh process with `devices` CPU devices."""
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env.update(env or {})
  return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                        text=True, timeout=timeout)


def tiny_model_config(**overrides):
  """The `model` section of a config for a narrow ResNet-18 (any key can be overridden)."""
  from vgssl_jax.config import base_config
  mc = base_config().model
  mc.update(dict(backbone="resnet18conv4", width=8, fc_output_dim=16, n_layers=2,
                 projection_size=24))
  mc.update(overrides)
  return mc


def tiny_network(projector_family: str = "vicreg", image_size=(32, 48), **overrides):
  """GeoLocalizationNet of tiny_model_config(**overrides) for `image_size` inputs."""
  from vgssl_jax.models.network import build_model
  return build_model(tiny_model_config(**overrides), projector_family, image_size)
