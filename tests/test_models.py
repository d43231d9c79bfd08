import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax.models import heads
from vgssl_jax.models.pooling import Pooling as Aggregation, gem
from vgssl_jax.models.layers import BatchNorm, Conv, l2_normalize
from vgssl_jax.models.resnet import stem_max_pool
from tests.conftest import tiny_network


def test_gem_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
  for p in (1.0, 3.0, 4.5):
    want = (np.maximum(x.astype(np.float64), 1e-6) ** p).mean(axis=(1, 2)) ** (1 / p)
    np.testing.assert_allclose(gem(jnp.asarray(x), p), want, rtol=1e-5)


def test_l2_normalize_matches_numpy_and_keeps_zeros():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(l2_normalize(jnp.asarray(x)), [[0.6, 0.8], [0.0, 0.0]])


def test_aggregation_is_l2_gem_fc_l2():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, size=(2, 3, 4, 8)).astype(np.float32)
  agg = Aggregation(fc_output_dim=5)
  v = agg.init(jax.random.PRNGKey(0), jnp.asarray(x))
  assert float(v["params"]["gem"]["p"][0]) == 3.0
  w = np.asarray(v["params"]["fc"]["kernel"], np.float64)
  b = np.asarray(v["params"]["fc"]["bias"], np.float64)
  xd = x.astype(np.float64)
  xd = xd / np.maximum(np.linalg.norm(xd, axis=-1, keepdims=True), 1e-12)
  pooled = (np.maximum(xd, 1e-6) ** 3).mean(axis=(1, 2)) ** (1 / 3)
  out = pooled @ w + b
  out /= np.linalg.norm(out, axis=-1, keepdims=True)
  np.testing.assert_allclose(agg.apply(v, jnp.asarray(x)), out, rtol=1e-5, atol=1e-6)
  # PyTorch's default Linear init: U(+-1/sqrt(fan_in)) for weight and bias
  assert np.abs(w).max() <= 1 / np.sqrt(8) and np.abs(b).max() <= 1 / np.sqrt(8)


def test_batchnorm_has_pytorch_semantics():
  rng = np.random.default_rng(2)
  x = rng.normal(2.0, 3.0, size=(4, 3, 3, 5)).astype(np.float32)
  bn = BatchNorm()
  v = bn.init(jax.random.PRNGKey(0), jnp.asarray(x), train=True)
  y, upd = bn.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])
  xd = x.reshape(-1, 5).astype(np.float64)
  mean, var = xd.mean(0), xd.var(0)
  np.testing.assert_allclose(y, ((x - mean) / np.sqrt(var + 1e-5)), rtol=1e-4, atol=1e-5)
  # running stats: momentum 0.1 and the *unbiased* variance, as torch.nn.BatchNorm2d
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xd.var(0, ddof=1), rtol=1e-5)
  # eval mode normalises with the running statistics
  y_eval = bn.apply({"params": v["params"], **upd}, jnp.asarray(x), train=False)
  rs = upd["batch_stats"]
  np.testing.assert_allclose(y_eval, (x - rs["mean"]) / np.sqrt(rs["var"] + 1e-5), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_1x1_conv_as_matmul_equals_convolution(stride):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 4)).astype(np.float32))
  conv = Conv(5, 1, stride)
  v = conv.init(jax.random.PRNGKey(0), x)
  want = jax.lax.conv_general_dilated(x, v["params"]["kernel"], (stride, stride), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv.apply(v, x), want, rtol=1e-5, atol=1e-5)


def _max_pool_numpy(x, g, k=3, s=2, p=1):
  """nn.MaxPool2d(k, s, p) and its gradient in float64: the first maximum in row-major
  window order takes the gradient, as PyTorch's CPU kernel does."""
  n, h, w, c = x.shape
  ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  y, dx = np.full((n, ho, wo, c), -np.inf), np.zeros(x.shape)
  for b, i, j, ch in np.ndindex(n, ho, wo, c):
    best = None
    for di in range(k):
      for dj in range(k):
        r, q = s * i + di - p, s * j + dj - p
        if 0 <= r < h and 0 <= q < w and (best is None or x[b, r, q, ch] > y[b, i, j, ch]):
          best, y[b, i, j, ch] = (r, q), x[b, r, q, ch]
    dx[b, best[0], best[1], ch] += g[b, i, j, ch]
  return y, dx


@pytest.mark.parametrize("shape", [(2, 9, 11, 3), (1, 8, 8, 2)])
def test_stem_max_pool_and_its_gradient_follow_pytorch(shape):
  rng = np.random.default_rng(5)
  # after a ReLU: many exact ties at zero, and a few positive ties
  x = np.maximum(rng.normal(size=shape), 0).round(1).astype(np.float32)
  y = stem_max_pool(jnp.asarray(x))
  g = rng.normal(size=y.shape).astype(np.float32)
  dx = jax.grad(lambda v: jnp.sum(stem_max_pool(v) * g))(jnp.asarray(x))
  want_y, want_dx = _max_pool_numpy(x.astype(np.float64), g.astype(np.float64))
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6)


# The original's projector (docs/original.md §Projector and predictor): (layer kind, has
# bias) per nn.Sequential index.
PROJECTORS = {
    ("vicreg", 1): {"0": ("linear", False)},
    ("vicreg", 2): {"0": ("linear", False), "1": ("bn", None), "3": ("linear", False)},
    ("vicreg", 3): {"0": ("linear", False), "1": ("bn", None), "3": ("linear", False),
                    "4": ("bn", None), "6": ("linear", False)},
    ("byol", 1): {"0": ("linear", True)},
    ("byol", 2): {"0": ("linear", False), "1": ("bn", None), "3": ("linear", True)},
    ("byol", 3): {"0": ("linear", False), "1": ("bn", None), "3": ("linear", False),
                  "4": ("bn", None), "6": ("linear", True)},
    ("contrastive", 1): {"0": ("linear", True)},
    ("contrastive", 2): {"0": ("linear", True), "2": ("linear", True)},
}


@pytest.mark.parametrize("family,n_layers", sorted(PROJECTORS))
def test_projector_layouts(family, n_layers):
  proj = heads.Projector(family, n_layers, 12)
  v = proj.init(jax.random.PRNGKey(0), jnp.ones((4, 6)), train=False)
  params = v["params"]
  want = PROJECTORS[(family, n_layers)]
  assert set(params) == set(want)
  for name, (kind, bias) in want.items():
    if kind == "linear":
      assert ("bias" in params[name]) == bias
    else:
      assert set(params[name]) == {"scale", "bias"}
      assert set(v["batch_stats"][name]) == {"mean", "var"}


def test_projector_rejects_impossible_depths():
  with pytest.raises(ValueError, match="n_layers=3"):
    heads.projector_layout("contrastive", 3)
  with pytest.raises(ValueError, match="n_layers=4"):
    heads.projector_layout("vicreg", 4)


def test_network_outputs_descriptor_and_projection():
  net = tiny_network()
  x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 32, 48, 3)).astype(np.float32))
  v = net.init(jax.random.PRNGKey(0), x, train=False)
  out = net.apply(v, x, train=False)
  assert out["descriptor"].shape == (3, 16) and out["projection"].shape == (3, 24)
  np.testing.assert_allclose(np.linalg.norm(out["descriptor"], axis=1), 1.0, rtol=1e-5)
  no_proj = tiny_network(n_layers=0)
  v0 = no_proj.init(jax.random.PRNGKey(0), x, train=False)
  out0 = no_proj.apply(v0, x, train=False)
  np.testing.assert_array_equal(out0["projection"], out0["descriptor"])


def test_resnet50_names_and_shapes_match_torchvision():
  """Our resnet50conv5 maps 1:1 onto torchvision's resnet50 state dict (without fc)."""
  import os

  from vgssl_jax.models.resnet import ResNet
  from vgssl_jax.models.weights.names import to_torch_state
  path = os.path.join(os.path.dirname(__file__), "data", "torchvision_resnet50_keys.txt")
  with open(path) as f:
    want = {name: tuple(int(s) for s in shape.split("x"))
            for name, shape in (line.split() for line in f if line.strip())}
  assert len(want) == 265  # the list printed by torchvision.models.resnet50().state_dict()
  model = ResNet(depth=50, last_stage=5, width=64)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                                             train=False))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  got = {k: v.shape for k, v in to_torch_state(zeros["params"], zeros["batch_stats"]).items()}
  assert got == want


def test_bfloat16_descriptors_are_finite_and_close_to_float32():
  """A batch of 128 through the jitted bfloat16 network (the evaluation batch of the demo):
  XLA's CPU compiler once fused the bf16 feature map into the float32 aggregation and
  produced NaNs here."""
  from vgssl_jax import sharding
  from vgssl_jax.models.inputs import normalize
  from vgssl_jax.objectives.base import retrieval_variables
  from vgssl_jax.objectives.ssl import LossConfig, VICReg
  from vgssl_jax.objectives.views import ViewConfig
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.state import create_train_state
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(128, 96, 128, 3), dtype=np.uint8)
  out = {}
  for dtype in ("float32", "bfloat16"):
    net = tiny_network(width=16, fc_output_dim=256, projection_size=1024, dtype=dtype)
    method = VICReg("vicreg", net, LossConfig(), ViewConfig(0.0, False))
    state = create_train_state(method, make_optimizer(1e-3), 0, (96, 128), sharding.make_mesh(1))
    variables = retrieval_variables(state.params, state.batch_stats)
    f = jax.jit(lambda v, x: net.apply(v, normalize(x, net.dtype), train=False,
                                       project=False)["descriptor"])
    out[dtype] = np.asarray(f(variables, images))
  assert np.isfinite(out["bfloat16"]).all()
  # an untrained network's descriptors of different images are already close (cosine
  # about 0.997), so check that each bf16 descriptor is nearest to its own float32 one
  sim = out["bfloat16"].astype(np.float64) @ out["float32"].astype(np.float64).T
  np.testing.assert_array_equal(sim.argmax(axis=1), np.arange(len(images)))
