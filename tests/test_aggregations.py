"""The benchmark's aggregations against float64 NumPy references: NetVLAD (forward and its
initialisation), SPoC, MAC, R-MAC, the L2 placements and the optional FC."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax.models import pooling as agg


def l2(x, axis=-1):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def netvlad_reference(x, centroids, conv):
  """The benchmark's NetVLAD.forward in float64 (NCHW there, NHWC here): x (N, H, W, C)."""
  n, h, w, c = x.shape
  flat = l2(x.reshape(n, h * w, c).astype(np.float64))
  logits = flat @ conv
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  vlad = np.zeros((n, conv.shape[1], c))
  for k in range(conv.shape[1]):  # as the original's loop over clusters
    residual = flat - centroids[k]
    vlad[:, k] = (residual * a[:, :, k:k + 1]).sum(1)
  return l2(l2(vlad).reshape(n, -1))


def test_netvlad_forward_matches_the_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  module = agg.NetVLAD(clusters=5)
  v = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
  p = v["params"]
  want = netvlad_reference(x, np.asarray(p["centroids"], np.float64),
                           np.asarray(p["conv"]["kernel"][0, 0], np.float64))
  np.testing.assert_allclose(module.apply(v, jnp.asarray(x)), want, atol=2e-6)


def test_netvlad_initialisation_alpha_and_assignment():
  rng = np.random.default_rng(1)
  centroids = rng.normal(size=(4, 3))
  descriptors = l2(rng.normal(size=(50, 3)))
  got = agg.netvlad_init_params(centroids, descriptors)
  # by hand: alpha = -ln 0.01 / mean over descriptors of (best - second best) dot product
  unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
  dots = np.sort(unit @ descriptors.T, axis=0)
  alpha = -np.log(0.01) / np.mean(dots[-1] - dots[-2])
  assert got["alpha"] == pytest.approx(alpha, rel=1e-12)
  np.testing.assert_allclose(got["conv"]["kernel"][0, 0], (alpha * unit).T, rtol=1e-6)
  np.testing.assert_allclose(got["centroids"], centroids, rtol=1e-6)


def test_netvlad_kmeans_initialisation_recovers_separated_clusters(tiny_root, monkeypatch):
  """with_netvlad_init on descriptors from 2 well-separated directions: the centroids are
  their means (faiss k-means), whatever the network."""
  import types

  from vgssl_jax.training import initial_weights
  rng = np.random.default_rng(2)
  centres = l2(rng.normal(size=(2, 8)) * 5)

  class FakeEmbedder:
    def __call__(self, variables, source, ids, output, desc):
      assert output == "feature_map"
      labels = np.arange(len(ids) * 6) % 2
      out = centres[labels] + rng.normal(scale=0.01, size=(len(labels), 8))
      return out.reshape(len(ids), 2, 3, 8).astype(np.float32)
  places = types.SimpleNamespace(num_database=30, num_queries=10, images=lambda part: part)
  from tests.conftest import tiny_config
  c = tiny_config(tiny_root)
  c.model.netvlad_clusters, c.model.aggregation = 2, "netvlad"
  captured = {}
  state = types.SimpleNamespace(
      params={"net": {"aggregation": {}}}, batch_stats={"net": {}}, objective_state={})
  monkeypatch.setattr(initial_weights, "replace_net",
                      lambda s, variables, mesh: captured.update(variables) or s)
  monkeypatch.setattr(initial_weights, "net_variables", lambda s: {
      "params": s.params["net"], "batch_stats": s.batch_stats["net"]})
  initial_weights.with_netvlad_init(state, c, places, FakeEmbedder(), mesh=None)
  got = captured["params"]["aggregation"]["netvlad"]["centroids"]
  # each true centre has one centroid close to it (k-means of normalised descriptors)
  dist = np.linalg.norm(got[:, None] - centres[None], axis=-1)
  assert np.sort(dist.min(axis=0)).max() < 0.05


@pytest.mark.parametrize("l2_mode", agg.L2_MODES)
@pytest.mark.parametrize("kind", ["gem", "spoc", "mac", "rmac"])
def test_poolings_with_each_l2_placement(kind, l2_mode):
  rng = np.random.default_rng(3)
  x = rng.uniform(0.01, 1.0, size=(2, 5, 7, 4)).astype(np.float32)
  module = agg.Pooling(fc_output_dim=0, kind=kind, l2=l2_mode)
  v = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
  xr = x.astype(np.float64)
  if l2_mode == "before_pool":
    xr = l2(xr)
  if kind == "gem":
    want = (np.maximum(xr, 1e-6) ** 3).mean((1, 2)) ** (1 / 3)
  elif kind == "spoc":
    want = xr.mean((1, 2))
  elif kind == "mac":
    want = xr.max((1, 2))
  else:
    want = rmac_reference(xr)
  if l2_mode == "after_pool":
    want = l2(want)
  np.testing.assert_allclose(module.apply(v, jnp.asarray(x)), want, rtol=2e-5, atol=1e-6)


def rmac_reference(x, eps=1e-6):
  """cirtorch's rmac (the benchmark's), transcribed for NHWC float64."""
  import math
  h, w = x.shape[1:3]
  ovr, steps = 0.4, np.array([2, 3, 4, 5, 6, 7.0])
  side = min(w, h)
  b = (max(h, w) - side) / (steps - 1)
  idx = np.argmin(np.abs(((side ** 2 - side * b) / side ** 2) - ovr))
  wd, hd = (idx + 1, 0) if h < w else ((0, idx + 1) if h > w else (0, 0))
  def mx(r):
    v = r.max((1, 2))
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + eps)
  v = mx(x)
  for lv in range(1, 4):
    wl = math.floor(2 * side / (lv + 1))
    wl2 = math.floor(wl / 2 - 1)
    bw = 0 if lv + wd == 1 else (w - wl) / (lv + wd - 1)
    bh = 0 if lv + hd == 1 else (h - wl) / (lv + hd - 1)
    for i in np.floor(wl2 + np.arange(lv + hd) * bh) - wl2:
      for j in np.floor(wl2 + np.arange(lv + wd) * bw) - wl2:
        if wl:
          v = v + mx(x[:, int(i):int(i) + wl, int(j):int(j) + wl])
  return v


def test_fc_sized_from_netvlad_output():
  """FC after NetVLAD takes K * C inputs (the original mis-sizes it in SSL mode)."""
  x = jnp.ones((2, 3, 4, 6))
  module = agg.Pooling(fc_output_dim=5, kind="netvlad", clusters=3)
  v = module.init(jax.random.PRNGKey(0), x)
  assert v["params"]["fc"]["kernel"].shape == (18, 5)
  out = module.apply(v, x)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind,l2_mode,fc,projector", [
    ("netvlad", "before_pool", 16, True), ("netvlad", "before_pool", 0, False),
    ("gem", "after_pool", 0, False), ("gem", "before_pool", 16, True),
    ("spoc", "before_pool", 16, False)])
def test_original_checkpoints_of_each_aggregation_import(kind, l2_mode, fc, projector):
  """A state dict in the original's key layout (built from the rules of
  original_aggregation_names, written out here) loads into our network exactly."""
  from tests.conftest import tiny_network
  from vgssl_jax.models.weights import names, vgssl
  net = tiny_network(aggregation=kind, l2=l2_mode, fc_output_dim=fc, netvlad_clusters=3,
                     n_layers=2 if projector else 0)
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 48, 3)),
                                           train=False))
  rng = np.random.default_rng(4)
  source = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), dict(shapes))
  ours = names.to_torch_state(source["params"], source.get("batch_stats"))
  head = "aggregation." + ("0." if projector else "")
  pool = head + ("0." if fc else "")
  original_names = {"aggregation.fc.weight": head + "1.weight", "aggregation.fc.bias": head + "1.bias",
                    "aggregation.gem.p": pool + ("1" if l2_mode == "before_pool" else "0") + ".p",
                    "aggregation.netvlad.centroids": pool + "centroids",
                    "aggregation.netvlad.conv.weight": pool + "conv.weight"}
  state = {}
  for name, value in ours.items():
    if name.startswith("aggregation."):
      state[original_names[name]] = value
    elif name.startswith("backbone."):
      state[name] = value
  if projector:
    state[head[:-2] + "1.0.weight"] = np.zeros((24, 16), np.float32)  # ignored projector
  target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
  loaded, report = vgssl.import_vgssl_state(state, target)
  assert report["layout"] == ("projector" if projector else "plain")
  for part in ("backbone", "aggregation"):
    for a, b in zip(jax.tree.leaves(loaded["params"][part]), jax.tree.leaves(source["params"][part])):
      np.testing.assert_array_equal(a, b)


def test_rmac_regions_are_computed_in_float32_as_the_original():
  """On a 2 x 32 map the third level's last centre is floor(-1 + 7 * (31 / 7)) + 1: the
  original's float32 product is 30.999998 (region at column 30), float64's 31.000000000000004
  (column 31)."""
  assert np.float32(7) * np.float32(31 / 7) < 31 <= 7 * (31 / 7)
  regions = agg.rmac_regions(2, 32)
  assert (0, 30, 1) in regions and (0, 31, 1) not in regions[:23]


@pytest.mark.parametrize("l2_mode", ["before_pool", "after_pool", "none"])
def test_rmac_equals_the_original_on_every_map_shape(l2_mode):
  """golden zoo_aggregations.npz: the original's R-MAC (cirtorch's region grid) on wide,
  tall, square and three-row maps."""
  from tests import golden
  g = golden.load("zoo_aggregations.npz")
  tag = f"rmac_{l2_mode}"
  module = agg.Pooling(0, "rmac", l2_mode)
  outputs = [k[len(tag) + 1:] for k in g if k.startswith(f"{tag}/out_")]
  assert len(outputs) >= 4
  for out in outputs:
    fmap = jnp.asarray(g[out[len("out_"):]].transpose(0, 2, 3, 1))
    got = module.apply({}, fmap)
    np.testing.assert_allclose(got, g[f"{tag}/{out}"], atol=2e-5 * np.abs(g[f"{tag}/{out}"]).max())
