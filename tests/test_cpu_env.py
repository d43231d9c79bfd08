import pytest

from vgssl_jax import cpu_env


def test_defaults_are_wanted_on_a_plain_cpu_host(monkeypatch):
  for var in ("VGSSL_CPU_TUNING", cpu_env.MARK, "GLIBC_TUNABLES", "JAX_PLATFORMS",
              "MALLOC_ARENA_MAX"):
    monkeypatch.delenv(var, raising=False)
  assert cpu_env.wanted() == {"GLIBC_TUNABLES": cpu_env.GLIBC_TUNABLES}


def test_user_settings_and_opt_out_win(monkeypatch):
  monkeypatch.delenv(cpu_env.MARK, raising=False)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setenv("VGSSL_CPU_TUNING", "0")
  assert cpu_env.wanted() == {}
  monkeypatch.setenv("VGSSL_CPU_TUNING", "1")
  monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
  assert cpu_env.wanted() == {}
  monkeypatch.delenv("MALLOC_ARENA_MAX")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert cpu_env.wanted() == {}
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv(cpu_env.MARK, "1")  # already re-executed once
  assert cpu_env.wanted() == {}


def test_train_step_options_only_for_bottleneck_resnets_on_cpu(monkeypatch):
  monkeypatch.delenv("VGSSL_CPU_TUNING", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert cpu_env.train_step_compiler_options("onednn_dots", "cpu") == cpu_env.ONEDNN_DOTS
  assert cpu_env.train_step_compiler_options("xla_convolutions", "cpu") == cpu_env.XLA_CONVOLUTIONS
  assert cpu_env.train_step_compiler_options("", "cpu") is None  # attention: YNNPACK
  assert cpu_env.train_step_compiler_options("onednn_dots", "gpu") is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=eltwise")
  assert cpu_env.train_step_compiler_options("onednn_dots", "cpu") is None  # the user's wins
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("VGSSL_CPU_TUNING", "0")
  assert cpu_env.train_step_compiler_options("onednn_dots", "cpu") is None


def test_the_step_gets_the_options_by_its_network(monkeypatch):
  from vgssl_jax.config import base_config
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.step import step_compiler_options

  monkeypatch.delenv("VGSSL_CPU_TUNING", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)

  def options(backbone, platform="cpu", method="vicreg"):
    c = base_config()
    c.method = method
    c.data.image_size = (64, 64)
    c.model.backbone, c.model.width = backbone, 8
    c.model.vit.update({"embed_dim": 32, "depth": 1, "num_heads": 2})
    if method == "r2former":
      c.model.n_layers, c.model.local_dim, c.model.num_local = 0, 16, 8
    return step_compiler_options(build_objective(c).model, platform)
  assert options("resnet50conv5") == cpu_env.ONEDNN_DOTS
  assert options("resnet101conv4") == cpu_env.ONEDNN_DOTS
  assert options("vgg16") == cpu_env.XLA_CONVOLUTIONS
  assert options("resnet50conv5", "gpu") is None
  assert options("resnet18conv4") is None  # no 1x1 products to speak of; keeps the cache
  assert options("deit") is None
  assert options("resnet50conv5", method="r2former") is None  # attention: YNNPACK


@pytest.mark.filterwarnings("ignore:Error writing persistent compilation cache")
def test_the_resnet_step_compiles_with_onednn_products_and_gives_the_same_step():
  """The options reach XLA (oneDNN fusions in the compiled step) and change no result
  beyond float rounding: one step with and without them."""
  import functools

  import jax
  import numpy as np
  import optax

  from vgssl_jax import sharding
  from vgssl_jax.config import base_config
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.state import create_train_state
  from vgssl_jax.training.step import train_step

  c = base_config()
  c.data.image_size = (32, 32)
  c.model.backbone, c.model.width, c.model.fc_output_dim = "resnet18conv4", 8, 32
  c.model.n_layers, c.model.projection_size = 1, 64
  mesh = sharding.make_mesh(0)
  objective = build_objective(c)
  tx = optax.adam(1e-3)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for k in ("query", "positive")}
  results = []
  for options in (cpu_env.ONEDNN_DOTS, None):
    state = create_train_state(objective, tx, 0, (32, 32), mesh)
    step = jax.jit(functools.partial(train_step, objective=objective, tx=tx),
                   compiler_options=options)
    hlo = step.lower(state, batch).compile().as_text()
    assert ("onednn_fusion" in hlo) == (options is not None)
    results.append(step(state, batch))
  (s1, m1), (s2, m2) = results
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               s1.params, s2.params)
