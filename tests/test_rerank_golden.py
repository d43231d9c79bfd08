"""Stage 2 against the original's own outputs (tests/data/golden, made by its PyTorch code):
the DeiT and ResNet local tokens, the R2Former, the re-ranking evaluation, the stage-2 loop's
losses; weights loaded by the original's state-dict names (backbone.*, local_head.*,
Reranker.*)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.places import Neighbors
from tests import golden
from tests.test_deit import deit_config
from vgssl_jax.evaluation import metrics
from vgssl_jax.evaluation.rerank import Reranker, reorder
from vgssl_jax.evaluation.search import faiss_knn
from vgssl_jax.models import resnet
from vgssl_jax.models.network import build_model, init_variables
from vgssl_jax.models.r2former import R2Former, sincos_1d
from vgssl_jax.models.weights import vgssl
from vgssl_jax.models.weights.names import from_torch_state
from vgssl_jax.objectives import losses


def nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


state_of = golden.weights


def rerank_deit_net(cfg: dict):
  """The stage-2 DeiT network of a golden file's config."""
  size = tuple(cfg["resize"])
  mc = deit_config(cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["fc_output_dim"],
                   local_dim=cfg["local_dim"], num_local=cfg["num_local"])
  net = build_model(mc, None, size)
  return net, init_variables(net, jax.random.PRNGKey(0), size)


@pytest.fixture(scope="module")
def deit_stage2():
  g = golden.load("rerank_deit.npz")
  net, variables = rerank_deit_net(golden.config(g))
  loaded, report = vgssl.import_vgssl_state(state_of(g), jax.device_get(variables))
  assert report["stage2"] == ["local_head", "Reranker"]
  return g, net, loaded


@pytest.mark.parametrize("i", [0, 1, 2], ids=["model size", "smaller: crop", "larger: pos_resize"])
def test_deit_local_tokens_equal_the_original(deit_stage2, i):
  g, net, variables = deit_stage2
  out = net.apply(variables, nhwc(g[f"images_{i}"]), train=False, project=False, local=True)
  np.testing.assert_allclose(out["descriptor"], g[f"global_{i}"], atol=2e-5)
  local, want = np.asarray(out["local"]), g[f"local_{i}"]
  np.testing.assert_allclose(local[..., :3], want[..., :3], atol=1e-6)  # x, y, attention
  np.testing.assert_allclose(local[..., 3:], want[..., 3:], atol=2e-5)
  maps = net.apply(variables, nhwc(g[f"images_{i}"]), False, tokens=True,
                   method=lambda m, x, t, tokens: m.backbone(x, t, tokens=tokens)).local
  np.testing.assert_allclose(maps["attention"], g[f"attn_map_{i}"], atol=1e-6)
  np.testing.assert_allclose(maps["tokens"], g[f"tokens_in_last_block_{i}"], atol=2e-5)
  order = np.argsort(-np.asarray(maps["attention"]), axis=1)[:, :g[f"order_{i}"].shape[1]]
  np.testing.assert_array_equal(order, g[f"order_{i}"])
  # the off-by-two: the feature of selected patch k is local_head(token at position k)
  head = variables["params"]["local_head"]
  tokens = g[f"tokens_in_last_block_{i}"]
  picked = np.take_along_axis(tokens, g[f"order_{i}"][..., None], axis=1)
  np.testing.assert_allclose(local[..., 3:], picked @ head["kernel"] + head["bias"], atol=2e-5)


def test_resnet_local_tokens_equal_the_original():
  """forward_cnn: layer3 tokens ordered by the bicubically upsampled layer4 x FC saliency
  (a tiny torchvision Bottleneck ResNet: one block per stage, width_per_group 4)."""
  g = golden.load("rerank_resnet.npz")
  cfg = golden.config(g)
  size, state = tuple(cfg["resize"]), state_of(g)
  # "torchvision ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=4)"
  blocks = tuple(int(b) for b in re.search(r"\[([\d, ]+)\]", cfg["resnet"]).group(1).split(","))
  per_group = int(re.search(r"width_per_group=(\d+)", cfg["resnet"]).group(1))
  depth, last_stage = resnet.parse_backbone(cfg["backbone"])
  width = state["backbone.0.weight"].shape[0]  # the stem's channels
  mc = deit_config()  # any model section; the network is assembled below
  mc.update(dict(backbone=cfg["backbone"], width=width, fc_output_dim=cfg["fc_output_dim"],
                 local_dim=cfg["local_dim"], num_local=cfg["num_local"], n_layers=0,
                 aggregation=cfg["aggregation"], l2=cfg["l2"]))
  net = build_model(mc, None, size)
  net = net.clone(backbone=resnet.ResNet(depth, last_stage, width, blocks=blocks,
                                         width_per_group=per_group))
  variables = jax.device_get(init_variables(net, jax.random.PRNGKey(0), size))
  variables, report = vgssl.import_vgssl_state(state_of(g), variables)
  assert report["stage2"] == ["local_head"] and report["layout"] == "plain"
  x = nhwc(g["images"])
  out = net.apply(variables, x, train=False, project=False, local=True)
  np.testing.assert_allclose(out["descriptor"], g["global_desc"], atol=2e-5)
  local = np.asarray(out["local"])
  np.testing.assert_allclose(local[..., :2], g["local"][..., :2], atol=1e-6)
  # attention = saliency / max: saliency comes from layer4 (values up to ~35, float32 sums)
  np.testing.assert_allclose(local[..., 2], g["local"][..., 2], atol=5e-6)
  np.testing.assert_allclose(local[..., 3:], g["local"][..., 3:], atol=2e-5)
  features = net.apply(variables, x, False, tokens=True,
                       method=lambda m, x, t, tokens: m.backbone(x, t, tokens=tokens))
  layer4, maps = features.feature_map, features.local
  for name, got in (("layer3", maps["layer3"]), ("layer4", layer4)):
    want = g[name].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
  from vgssl_jax.models import interpolate, local_tokens
  kernel = variables["params"]["aggregation"]["fc"]["kernel"]
  s32 = local_tokens.saliency(layer4, kernel)
  np.testing.assert_allclose(np.asarray(s32).reshape(len(s32), -1), g["saliency_stride32"],
                             rtol=2e-5)
  n, h4, w4 = layer4.shape[:3]
  grid3 = g["layer3"].shape[2:]
  s16 = interpolate.resize(jnp.asarray(g["saliency_stride32"]).reshape(n, h4, w4), grid3,
                           "bicubic", axes=(1, 2))
  np.testing.assert_allclose(np.asarray(s16).reshape(n, -1), g["saliency"], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.argsort(-g["saliency"], axis=1)[:, :g["order"].shape[1]],
                                g["order"])


def r2former_params(g):
  """The R2Former sized by the golden weights: width from the tokens, depths from the
  numbered blocks, num_local from the (unused) decoder position embedding."""
  state = state_of(g)
  m = R2Former(num_local=(state["decoder_pos_embed"].shape[1] - 1) // 2,
               dim=state["cls_token"].shape[-1], depth=golden.block_count(state, "blocks."),
               corr_depth=golden.block_count(state, "blocks_2."),
               mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / state["cls_token"].shape[-1])
  v = jax.device_get(m.init(jax.random.PRNGKey(0), g["x_global"], g["x_local"], g["y_global"],
                            g["y_local"]))
  return m, from_torch_state(state, {"params": v["params"]})


@pytest.mark.parametrize("prefix", ["", "odd_"], ids=["candidates per query", "odd tokens"])
def test_r2former_equals_the_original(prefix):
  """Several candidates per query; and coordinates outside [0, 1] with 7 vs 9 tokens."""
  g = golden.load("r2former.npz")
  m, params = r2former_params(g)
  logits, final = m.apply(params, *(g[prefix + k] for k in ("x_global", "x_local", "y_global",
                                                             "y_local")))
  np.testing.assert_allclose(logits, g[prefix + "logits"], atol=2e-5)
  np.testing.assert_allclose(final, g[prefix + "final_score"], atol=2e-5)


def test_sincos_embedding_by_hand():
  """dim 4 at p = 2: [sin 2, sin(2 / 100), cos 2, cos(2 / 100)]."""
  got = np.asarray(sincos_1d(4, jnp.array([2.0])))[0]
  np.testing.assert_allclose(got, [np.sin(2), np.sin(0.02), np.cos(2), np.cos(0.02)], rtol=1e-6)


def test_rerank_evaluation_equals_the_original(deit_stage2):
  """test.test_rerank on a toy problem: descriptors and local tokens from our network, the
  global top-K, every R2Former call's logits, the re-ranked order and both recalls."""
  _, net, variables = deit_stage2
  g = golden.load("test_rerank.npz")
  cfg = golden.config(g)
  apply = lambda x: net.apply(variables, nhwc(x), train=False, project=False,  # noqa: E731
                              local=True)
  db, q = apply(g["database_images"]), apply(g["query_images"])
  for got, name in ((db["descriptor"], "database_features"), (q["descriptor"], "queries_features"),
                    (db["local"], "database_re_features"), (q["local"], "queries_re_features")):
    np.testing.assert_allclose(got, g[name], atol=2e-5)
  dist, predictions = faiss_knn(np.asarray(q["descriptor"]), np.asarray(db["descriptor"]),
                                cfg["rerank_top"])
  np.testing.assert_array_equal(predictions, g["predictions"])
  np.testing.assert_allclose(dist, g["distances"], atol=2e-5)

  class Stub:  # what Reranker reads of an Embedder
    model, progress = net, False
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  reranker = Reranker(Stub(), variables, top=cfg["rerank_top"], batch_size=cfg["rerank_bs"])
  logits = reranker.logits(np.asarray(q["local"]), np.asarray(db["local"]), predictions)
  np.testing.assert_allclose(logits, g["rerank_logits"], atol=2e-5)
  new_rank = reorder(predictions, np.asarray(jax.nn.softmax(logits, -1)[..., 1]))
  np.testing.assert_array_equal(new_rank, g["new_rank"])
  pos = g["positives"]
  positives = Neighbors(np.concatenate([[0], np.cumsum((pos >= 0).sum(1))]), pos[pos >= 0])
  for ranking, name in ((predictions, "global_recalls"), (new_rank, "rerank_recalls")):
    got = metrics.recalls(ranking, positives, tuple(cfg["recall_values"]))
    np.testing.assert_allclose([got[f"recall@{n}"] for n in cfg["recall_values"]], g[name],
                               atol=1e-9)


@pytest.mark.parametrize("kind", losses.RERANK_LOSSES)
@pytest.mark.parametrize("fix", [1, 0])
def test_stage2_losses_equal_the_original_loop(kind, fix):
  """train_reranker.py's loop on B queries x M negatives (float64): the re-ranking term per
  slice over B * M, plus the global triplet sum with fix = 0."""
  with jax.enable_x64(True):
    g = golden.load("losses.npz")
    m, _, b = g["st2_logits"].shape[:3]   # [slice j, pos | neg, query b, 2]
    f, t = g["st2_features"], g["st2_triplets_local_indexes"].reshape(b, m, 3)
    logits = g["st2_logits"].astype(np.float64)           # [slice j, pos | neg, query b]
    for j in range(1, m):  # the (q, p) logits are the same in every slice
      np.testing.assert_array_equal(logits[0, 0], logits[j, 0])
    q, p, n = f[t[:, 0, 0]], f[t[:, 0, 1]], f[t[:, :, 2]]
    got = losses.rerank_loss(kind, logits[0, 0], logits[:, 1].swapaxes(0, 1), 0.1,
                             None if fix else (q, p, n))
    np.testing.assert_allclose(float(got), g[f"st2_{kind}_fix{fix}"], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind,name", [("ce", "rerank_ce"), ("triplet", "rerank_triplet"),
                                       ("infoNCE", "rerank_infonce")])
def test_one_slice_losses_equal_the_original(kind, name):
  with jax.enable_x64(True):
    g = golden.load("losses.npz")
    got = losses.rerank_slice_loss(kind, g["rerank_pos_logits"], g["rerank_neg_logits"], 0, 1)
    np.testing.assert_allclose(float(got), g[name], rtol=1e-10)


def test_stage2_network_round_trips_the_original_names(deit_stage2):
  """Our names of a stage-2 network, through the DeiT family's original names (its heads are
  the aggregation here), are the original's keys, and import back."""
  from vgssl_jax.models.weights.names import to_torch_state
  from vgssl_jax.models.weights.timm_deit import ORIGINAL_NAMES
  g, _, variables = deit_stage2
  state = {ORIGINAL_NAMES.to_original(k): v
           for k, v in to_torch_state(variables["params"], variables["batch_stats"]).items()}
  want = {k for k in state_of(g)}
  assert set(state) == want
  for k in want:
    np.testing.assert_array_equal(state[k], state_of(g)[k])
