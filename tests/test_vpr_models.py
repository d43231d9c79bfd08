"""Today's place-recognition models against their official code (golden files of DINOv2,
SALAD, BoQ and MixVPR): every stored output, each size read from the file."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden
from tests.conftest import tiny_model_config
from vgssl_jax.models import boq, dinov2, interpolate, mixvpr, salad
from vgssl_jax.models.features import Features
from vgssl_jax.models.network import build_model
from vgssl_jax.models.weights import releases
from vgssl_jax.models.weights.names import from_torch_state

TAGS = {"noreg": 0, "reg": dinov2.REGISTERS}


def indices(g: dict, key: str) -> list[int]:
  """The i of every `key`_i stored (inputs of several sizes)."""
  return sorted(int(k[len(key) + 1:]) for k in g if k.startswith(key + "_") and
                k[len(key) + 1:].isdigit())


def nhwc(x: np.ndarray) -> jnp.ndarray:
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def load_module(module: nn.Module, weights: dict, *args) -> dict:
  """{"params"} of `module` (called with `args`) from torch-named `weights`."""
  template = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
  return from_torch_state(weights, {"params": template["params"]})


def close(got, want, scale: float = 1e-5, relative: bool = False, what: str = ""):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  atol = scale * (np.abs(want).max() if relative else 1.0)
  np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)


# ----------------------------------------------------------------------------- DINOv2

def dinov2_golden(tag: str):
  g = golden.load("dinov2.npz")
  cfg = golden.config(g)
  assert cfg[tag]["num_register_tokens"] == TAGS[tag]
  assert cfg["patch_size"] == dinov2.PATCH and cfg["ffn_layer"] == "mlp"
  weights = golden.weights(g)
  if not TAGS[tag]:
    weights.pop("register_tokens")
  return g, cfg, weights


@pytest.mark.parametrize("tag", TAGS)
def test_dinov2_position_embedding_interpolation(tag):
  """Both interpolations (bicubic with the 0.1 offset; antialiased bicubic with registers)
  and none at the square training size."""
  g, cfg, weights = dinov2_golden(tag)
  pos = weights["pos_embed"]
  m = cfg["img_size"] // cfg["patch_size"]
  assert pos.shape[1] == 1 + m * m
  for i in indices(g, "images"):
    h, w = (s // cfg["patch_size"] for s in g[f"images_{i}"].shape[2:])
    rows_cols = dinov2.position_weights(m, (h, w), TAGS[tag])
    patches = pos[0, 1:].reshape(m, m, -1)
    if rows_cols is not None:
      patches = interpolate.resize_with(jnp.asarray(patches), *rows_cols)
    got = np.concatenate([pos[0, :1], np.asarray(patches).reshape(h * w, -1)])[None]
    close(got, g[f"{tag}_pos_embed_{i}"], 5e-6, what=f"{tag} size {i}")
    if tag == "noreg" and f"noreg_pos_embed_plain_size_{i}" in g:  # without the offset
      plain = interpolate.resize_with(jnp.asarray(pos[0, 1:].reshape(m, m, -1)),
                                      interpolate.bicubic_matrix(m, h),
                                      interpolate.bicubic_matrix(m, w))
      close(np.asarray(plain).reshape(1, h * w, -1), g[f"noreg_pos_embed_plain_size_{i}"], 5e-6)


@pytest.mark.parametrize("tag", TAGS)
def test_dinov2_tokens_after_each_block_equal_the_official(tag):
  g, cfg, weights = dinov2_golden(tag)
  net = dinov2.DinoV2(cfg["embed_dim"], cfg["depth"], cfg["num_heads"], "mlp", TAGS[tag],
                      cfg["img_size"], final_norm=True)
  variables = None

  @jax.jit
  def run(variables, images):
    seen = {}

    def capture(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and isinstance(context.module, dinov2.DinoBlocks):
        seen["tokens_in"] = args[0]
      if context.method_name == "__call__" and isinstance(context.module, dinov2.DinoBlock):
        seen.setdefault("blocks", []).append(out)
      return out
    with nn.intercept_methods(capture):
      features = net.apply(variables, images, False)
    return features, seen["tokens_in"], jnp.stack(seen["blocks"])

  for i in indices(g, "images"):
    images = nhwc(g[f"images_{i}"])
    if variables is None:
      variables = load_module(net, weights, images, False)
    features, tokens_in, blocks = run(variables, images)
    want_blocks = g[f"{tag}_blocks_{i}"]
    assert blocks.shape == want_blocks.shape
    close(tokens_in, g[f"{tag}_tokens_in_{i}"], 1e-5, relative=True, what=f"tokens_in {i}")
    for b in range(len(want_blocks)):
      close(blocks[b], want_blocks[b], 1e-5, relative=True, what=f"block {b}, size {i}")
    close(features.prefix[:, 0], g[f"{tag}_x_norm_clstoken_{i}"], 1e-5, what="cls")
    n, gh, gw, d = features.feature_map.shape
    close(features.feature_map.reshape(n, gh * gw, d), g[f"{tag}_x_norm_patchtokens_{i}"],
          1e-5, what="patch tokens")
    if TAGS[tag]:
      close(features.registers, g[f"reg_x_norm_regtokens_{i}"], 1e-5, what="registers")
    else:
      assert features.registers is None


def test_dinov2_without_the_final_norm_gives_the_last_block():
  g, cfg, weights = dinov2_golden("noreg")
  net = dinov2.DinoV2(cfg["embed_dim"], cfg["depth"], cfg["num_heads"], "mlp", 0,
                      cfg["img_size"], final_norm=False)
  i = indices(g, "images")[-1]
  images = nhwc(g[f"images_{i}"])
  variables = load_module(net, weights, images, False)  # the norm's parameters exist, unused
  features = jax.jit(lambda v, x: net.apply(v, x, False))(variables, images)
  last = g[f"noreg_blocks_{i}"][-1]
  close(features.prefix[:, 0], last[:, 0], 1e-5, relative=True)
  n, gh, gw, d = features.feature_map.shape
  close(features.feature_map.reshape(n, -1, d), last[:, 1:], 1e-5, relative=True)


def test_dinov2_names_sizes_and_frozen_blocks():
  assert dinov2.parse("dinov2_vitb14_reg") == {"size": "vitb14", "registers": 4}
  assert dinov2.parse("dinov2_vitg14") == {"size": "vitg14", "registers": 0}
  assert dinov2.parse("dinov2_vitx14") is None and dinov2.parse("resnet50") is None
  assert dinov2.nearest_sizes(320) == "308 or 322" and dinov2.nearest_sizes(322) == "322"
  frozen = dinov2.frozen_paths(12, 4, 4)
  assert "blocks/7" in frozen and "blocks/8" not in frozen and "register_tokens" in frozen
  assert "norm" not in frozen and dinov2.frozen_paths(12, 0, 0) == ()


def test_dinov2_swiglu_hidden_width_is_the_official():
  """ViT-g's SwiGLUFFNFused: hidden (int(4 D * 2 / 3) + 7) // 8 * 8 (4096 for D = 1536)."""
  ffn = dinov2.SwiGLU(1536, 4 * 1536)
  shapes = jax.eval_shape(lambda: ffn.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 1536))))
  assert shapes["params"]["w12"]["kernel"].shape == (1536, 2 * 4096)
  assert shapes["params"]["w3"]["kernel"].shape == (4096, 1536)


# ----------------------------------------------------------------------------- SALAD

def salad_module(cfg: dict, out_dim: int = 0) -> salad.Salad:
  return salad.Salad(cfg["num_clusters"], cfg["cluster_dim"], cfg["token_dim"], cfg["hidden"],
                     cfg["dropout"], out_dim, cfg["sinkhorn_iters"])


def test_salad_equals_the_official_with_its_scores_and_assignment():
  g = golden.load("salad.npz")
  cfg = golden.config(g)
  net = salad_module(cfg)
  variables = None
  run = jax.jit(lambda v, f: net.apply(v, f, False, capture_intermediates=True,
                                       mutable=["intermediates"]))
  for i in indices(g, "descriptor"):
    features = Features(feature_map=nhwc(g[f"feature_map_{i}"]),
                        prefix=jnp.asarray(g[f"token_{i}"])[:, None])
    if variables is None:
      variables = load_module(net, golden.weights(g), features)
    descriptor, state = run(variables, features)
    inter = state["intermediates"]
    close(descriptor, g[f"descriptor_{i}"], 1e-5, what=f"descriptor {i}")
    log_p = inter["log_P"][0]
    close(log_p, g[f"log_P_{i}"], 2e-5, relative=True, what="log_P")
    n = log_p.shape[2]
    close(log_p - math.log(n + cfg["num_clusters"]), g[f"log_P_solver_{i}"], 2e-5, relative=True)
    close(jnp.swapaxes(inter["score"]["__call__"][0], 1, 2), g[f"scores_{i}"], 1e-5,
          relative=True, what="scores")
    close(jnp.swapaxes(inter["cluster_features"]["__call__"][0], 1, 2),
          g[f"cluster_features_{i}"], 1e-5, relative=True, what="cluster features")
    close(inter["token_features"]["__call__"][0], g[f"token_features_{i}"], 1e-5, relative=True)


def test_salad_sinkhorn_against_float64_numpy():
  """The log-space solver, written out in float64 NumPy from the method's description."""
  rng = np.random.default_rng(0)
  b, m, n = 2, 3, 7
  scores = rng.normal(size=(b, m, n)) * 2
  dust = 0.7
  aug = np.concatenate([scores, np.full((b, 1, n), dust)], axis=1)
  log_a = np.full((b, m + 1), -np.log(n + m))
  log_a[:, -1] += np.log(n - m)
  log_b = np.full((b, n), -np.log(n + m))
  u, v = np.zeros_like(log_a), np.zeros_like(log_b)

  def lse(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis))
  for _ in range(3):
    u = log_a - lse(aug + v[:, None, :], 2)
    v = log_b - lse(aug + u[:, :, None], 1)
  want = aug + u[:, :, None] + v[:, None, :] + np.log(n + m)
  got = salad.matching_log_probs(jnp.asarray(scores, jnp.float32), jnp.float32(dust))
  close(got, want, 1e-5)
  # every patch's m + 1 probabilities sum to one (the last update is the columns')
  close(np.exp(np.asarray(got) - np.log(n + m)).sum(axis=1) * (n + m), np.ones((b, n)), 1e-5)


def test_salad_needs_more_patches_than_clusters():
  with pytest.raises(ValueError, match="more patches than clusters"):
    salad.check(num_clusters=6, patches=6)
  salad.check(num_clusters=6, patches=7)


# ----------------------------------------------------------------------------- BoQ

def test_boq_equals_the_official_with_its_attention_maps():
  g = golden.load("boq.npz")
  cfg = golden.config(g)
  net = boq.BoQ(cfg["proj_channels"], cfg["num_queries"], cfg["num_layers"], cfg["row_dim"])
  assert cfg["proj_channels"] // 64 == cfg["nheads"]   # the heads rule the module applies
  features = Features(feature_map=nhwc(g["feature_map"]))
  variables = load_module(net, golden.weights(g), features)
  descriptor, state = jax.jit(lambda v, f: net.apply(
      v, f, capture_intermediates=True, mutable=["intermediates"]))(variables, features)
  inter = state["intermediates"]
  close(descriptor, g["descriptor"], 1e-5)
  close(inter["norm_input"]["__call__"][0], g["tokens_in"], 1e-5, relative=True)
  for j in range(cfg["num_layers"]):
    tokens, queries_out, _ = inter["boqs"][str(j)]["__call__"][0]
    close(tokens, g[f"layer{j}_tokens"], 1e-5, relative=True, what=f"layer {j} tokens")
    close(queries_out, g[f"layer{j}_queries_out"], 1e-5, relative=True, what=f"layer {j} queries")
    close(inter["boqs"]["attention"][j], g[f"layer{j}_attn"], 1e-5, what=f"layer {j} attention")


def test_boq_heads_must_divide_the_width():
  with pytest.raises(ValueError, match="proj_channels // 64 heads"):
    boq.check(48)
  boq.check(384)


# ----------------------------------------------------------------------------- MixVPR

def test_mixvpr_equals_the_official_at_each_stage():
  g = golden.load("mixvpr.npz")
  cfg = golden.config(g)
  assert cfg["ln_eps"] == 1e-5
  net = mixvpr.MixVPR(cfg["in_h"] * cfg["in_w"], cfg["out_channels"], cfg["mix_depth"],
                      cfg["mlp_ratio"], cfg["out_rows"])
  features = Features(feature_map=nhwc(g["feature_map"]))
  variables = load_module(net, golden.weights(g), features)
  descriptor, state = jax.jit(lambda v, f: net.apply(v, f, mutable=["intermediates"]))(
      variables, features)
  inter = state["intermediates"]
  close(descriptor, g["descriptor"], 1e-5)
  for stage in ("after_mix", "after_channel_proj", "after_row_proj"):
    close(inter[stage][0], g[stage], 1e-5, relative=True, what=stage)
  with pytest.raises(ValueError, match="made for maps of"):
    net.apply(variables, Features(feature_map=jnp.zeros((1, cfg["in_h"] + 1, cfg["in_w"],
                                                          cfg["in_channels"]))))


# ----------------------------------------------------------------------------- pipelines

def dinov2_settings(mc, cfg: dict) -> None:
  mc.dinov2.update(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                   img_size=cfg["img_size"])


def pipeline(name: str):
  """(golden file, its pipeline's network config, the official state dict of the whole
  model: dinov2.npz's weights under the release's backbone prefix + the aggregator's)."""
  g = golden.load(f"{name}.npz")
  cfg = golden.config(g)
  d = golden.load("dinov2.npz")
  dcfg = golden.config(d)
  backbone = {k: v for k, v in golden.weights(d).items() if k != "register_tokens"}
  mc = tiny_model_config(backbone="dinov2_vitb14", aggregation=name, fc_output_dim=0,
                         n_layers=0)
  dinov2_settings(mc, dcfg)
  if name == "salad":
    p = cfg["pipeline"]["backbone_config"]
    mc.train_blocks, mc.dinov2.final_norm = p["num_trainable_blocks"], p["norm_layer"]
    mc.salad.update(num_clusters=cfg["num_clusters"], cluster_dim=cfg["cluster_dim"],
                    token_dim=cfg["token_dim"], hidden=cfg["hidden"], dropout=cfg["dropout"])
    prefix = "backbone.model."
  else:  # BoQ's DinoV2 wrapper: the last 2 blocks learn, no final norm
    mc.train_blocks, mc.dinov2.final_norm = 2, False
    mc.boq.update(proj_channels=cfg["proj_channels"], num_queries=cfg["num_queries"],
                  num_layers=cfg["num_layers"], row_dim=cfg["row_dim"])
    prefix = "backbone.dino."
  state = {**{prefix + k: v for k, v in backbone.items()},
           **{f"aggregator.{k}": v for k, v in golden.weights(g).items()}}
  return g, mc, state


@pytest.mark.parametrize("name", ["salad", "boq"])
def test_dinov2_pipelines_equal_the_official_models(name):
  """The whole VPRModel (DINOv2 + SALAD, DINOv2 + BoQ), loaded from its official state dict
  (the release loader), at each stored size."""
  g, mc, state = pipeline(name)
  if "pipeline_state_dict_keys" in g:  # the official model's names, each of them
    assert set(state) == set(g["pipeline_state_dict_keys"].tolist())
  release = releases.recognise(state)
  assert release is not None and release.aggregation == name
  for i in indices(g, "pipe_images"):
    images = nhwc(g[f"pipe_images_{i}"])
    net = build_model(mc, None, images.shape[1:3])
    template = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), images, False))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(template))
    variables, report = releases.import_release(release, state, template, mc)
    assert report["layout"] == release.name
    out, inter = jax.jit(lambda v, x: net.apply(
        v, x, False, project=False, feature_map=True, mutable=["intermediates"]))(
            variables, images)
    close(out["descriptor"], g[f"pipe_descriptor_{i}"], 1e-5, what=f"descriptor {i}")
    close(jnp.transpose(out["feature_map"], (0, 3, 1, 2)), g[f"pipe_feature_map_{i}"], 1e-5,
          relative=True, what="feature map")
    agg = inter["intermediates"]["aggregation"]
    if name == "salad":
      close(agg["log_P"][0], g[f"pipe_log_P_{i}"], 2e-5, relative=True, what="log_P")
    else:
      for j, attn in enumerate(agg["boqs"]["attention"]):
        close(attn, g[f"pipe_layer{j}_attn_{i}"], 1e-5, what=f"attention {j}")
