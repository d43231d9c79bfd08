"""Aggregations by name (`model.aggregation`): what each consumes of the backbone's
Features (models.features), the module that makes the descriptor, its size, the config keys
it reads and its checks. `model.aggregation=""` takes the backbone family's default.

A pair the backbone cannot feed (a map pooling on a backbone that gives only class tokens)
is refused before any work, naming the aggregations that fit. Adding an aggregation = its
module in models/ and one entry in AGGREGATIONS; the network wires every pair alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models import backbones, boq, crn, deit, mixvpr, pooling, rrm, salad
from vgssl_jax.models.features import DESCRIBED, FEATURE_MAP, PREFIX, Features, FeatureShapes
from vgssl_jax.models.layers import Dense, fc_then_l2


def _no_check(model_config, shapes: FeatureShapes) -> None:
  del model_config, shapes


@dataclasses.dataclass(frozen=True)
class AggregationSpec:
  name: str
  consumes: tuple[str, ...]                    # Features kinds it reads
  build: Callable[..., nn.Module]              # (model config, FeatureShapes) -> module
  size: Callable[..., int]                     # (model config, FeatureShapes) -> descriptor dim
  description: str                             # for messages and the README's table
  keys: tuple[str, ...] = ()                   # config keys only it reads
  check: Callable[..., None] = _no_check       # (model config, FeatureShapes); ValueError
  # how its parameters start from data (training.initial_weights.DATA_INITS), e.g. NetVLAD's
  # k-means over the backbone's local descriptors; None: from their initialisers
  data_init: str | None = None
  # where under "aggregation" those parameters (NetVLAD's centroids and conv) live
  data_init_at: tuple[str, ...] = ()
  # an FC (model.fc_output_dim > 0) maps the pooled map channels: what a CNN's saliency of
  # stage-2 local tokens needs (layer4 x FC)
  pooled_channels: bool = False
  # whether it runs on a token sequence handed over as a map (FeatureShapes.sequence: CCT);
  # the original crashes for SPoC, MAC, R-MAC, RRM and CRN there
  on_sequence: bool = True
  # (model config) -> its parameter paths that do not learn (CRN's acc_w, as the original)
  frozen: Callable[..., tuple[str, ...]] = lambda mc: ()
  # its parameters are sized for the training map's grid (MixVPR): no other input size
  fixed_grid: bool = False


def _check_l2(mc, shapes) -> None:
  del shapes
  if mc.l2 not in pooling.L2_MODES:
    raise ValueError(f"model.l2={mc.l2!r} is not valid; expected one of "
                     f"{', '.join(pooling.L2_MODES)}")


def _check_netvlad(mc, shapes) -> None:
  del shapes
  if mc.netvlad_clusters < 1:
    raise ValueError(f"model.netvlad_clusters={mc.netvlad_clusters} must be >= 1")


def _check_heads(mc, shapes) -> None:
  if mc.fc_output_dim < 1:
    raise ValueError(f"model.fc_output_dim={mc.fc_output_dim}: the DeiT heads' size, must be > 0")
  if shapes.prefix_tokens < 2:
    raise ValueError("the distillation heads read two class tokens (cls and dist); this "
                     f"backbone gives {shapes.prefix_tokens}")


class ClsToken(nn.Module):
  """The first prefix token (a ViT's CLS; CCT's first token), as the original's `cls`:
  unchanged, or through FC -> L2 when fc_output_dim > 0."""
  fc_output_dim: int = 0

  @nn.compact
  def __call__(self, features: Features, train: bool = False):
    del train
    return fc_then_l2(features.prefix[:, 0].astype(jnp.float32), self.fc_output_dim)


class SeqPool(nn.Module):
  """CCT's sequence pooling (`seqpool`): softmax over the tokens of `attention_pool`
  (Linear(C, 1)), the weighted sum; FC -> L2 when fc_output_dim > 0."""
  fc_output_dim: int = 0

  @nn.compact
  def __call__(self, features: Features, train: bool = False):
    del train
    x = features.feature_map.astype(jnp.float32)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    weights = jax.nn.softmax(Dense(1, name="attention_pool")(x), axis=1)   # (N, T, 1)
    return fc_then_l2(jnp.sum(weights * x, axis=1), self.fc_output_dim)


class Identity(nn.Module):
  """`none`: the map itself as the descriptor, flattened in the original's order (C, H, W)
  (a token sequence: (tokens, C))."""
  sequence: bool = False

  @nn.compact
  def __call__(self, features: Features, train: bool = False):
    del train
    x = features.feature_map.astype(jnp.float32)
    if not self.sequence:
      x = x.transpose(0, 3, 1, 2)
    return x.reshape(x.shape[0], -1)


def _check_salad(mc, shapes) -> None:
  s = mc.salad
  if min(s.num_clusters, s.cluster_dim, s.token_dim, s.hidden) < 1 or s.out_dim < 0:
    raise ValueError("model.salad sizes (num_clusters, cluster_dim, token_dim, hidden) must be "
                     ">= 1 and out_dim >= 0")
  if not 0 <= s.dropout < 1:
    raise ValueError(f"model.salad.dropout={s.dropout} must be in [0, 1)")
  salad.check(s.num_clusters, shapes.map_hw[0] * shapes.map_hw[1])


def _check_boq(mc, shapes) -> None:
  del shapes
  b = mc.boq
  if min(b.num_queries, b.num_layers, b.row_dim) < 1:
    raise ValueError("model.boq.num_queries, num_layers and row_dim must be >= 1")
  boq.check(b.proj_channels)


def _check_mixvpr(mc, shapes) -> None:
  del shapes
  m = mc.mixvpr
  if min(m.out_channels, m.mix_depth, m.out_rows) < 1 or m.mlp_ratio <= 0:
    raise ValueError("model.mixvpr.out_channels, mix_depth and out_rows must be >= 1 and "
                     "mlp_ratio > 0")


def _check_crn(mc, shapes) -> None:
  _check_netvlad(mc, shapes)
  h, w = shapes.map_hw
  if h % 2 or w % 2:
    raise ValueError(f"model.aggregation=crn needs a map of even height and width (its mask is "
                     f"a x2 upsampling of a stride-2 pooling; the original crashes otherwise): "
                     f"this image size gives {h}x{w}; change data.image_size")


def _check_none(mc, shapes) -> None:
  del shapes
  if mc.fc_output_dim:
    raise ValueError(f"model.aggregation=none passes the whole map on as the descriptor and "
                     f"takes no FC (the original's Linear would not fit it): set "
                     f"model.fc_output_dim=0 (it is {mc.fc_output_dim})")


def _check_seqpool(mc, shapes) -> None:
  del mc
  if not shapes.sequence:
    raise ValueError("model.aggregation=seqpool pools a token sequence (model.backbone=cct384)")


def _pooling(name: str) -> AggregationSpec:
  return AggregationSpec(
      name, (FEATURE_MAP,),
      build=lambda mc, shapes: pooling.Pooling(mc.fc_output_dim, name, mc.l2, mc.netvlad_clusters,
                                               shapes.sequence),
      size=lambda mc, shapes: mc.fc_output_dim or shapes.map_channels,
      description={"gem": "generalised mean (learnable p)", "spoc": "average pooling",
                   "mac": "max pooling", "rmac": "regional max pooling (3 scales)"}[name]
      + ", L2 by model.l2, FC when model.fc_output_dim > 0",
      keys=("model.l2",), check=_check_l2, pooled_channels=True, on_sequence=name == "gem")


AGGREGATIONS: dict[str, AggregationSpec] = {
    **{name: _pooling(name) for name in pooling.POOLINGS},
    "netvlad": AggregationSpec(
        "netvlad", (FEATURE_MAP,),
        build=lambda mc, shapes: pooling.Pooling(mc.fc_output_dim, "netvlad", mc.l2,
                                                 mc.netvlad_clusters, shapes.sequence),
        size=lambda mc, shapes: mc.fc_output_dim or mc.netvlad_clusters * shapes.map_channels,
        description="NetVLAD (model.netvlad_clusters, k-means initialised), FC when "
                    "model.fc_output_dim > 0",
        keys=("model.netvlad_clusters",), check=_check_netvlad, data_init="kmeans",
        data_init_at=("netvlad",)),
    deit.AGGREGATION: AggregationSpec(
        deit.AGGREGATION, (PREFIX,),
        build=lambda mc, shapes: deit.DistilledHeads(mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim,
        description="DeiT's cls and distillation heads, averaged (model.fc_output_dim wide)",
        check=_check_heads),
    "cls": AggregationSpec(
        "cls", (PREFIX,), build=lambda mc, shapes: ClsToken(mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim or shapes.token_dim,
        description="the first class token (CCT: its first token), FC -> L2 when "
                    "model.fc_output_dim > 0, as it is otherwise"),
    "seqpool": AggregationSpec(
        "seqpool", (FEATURE_MAP,), build=lambda mc, shapes: SeqPool(mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim or shapes.token_dim,
        description="CCT's sequence pooling (attention weights over the tokens), FC -> L2 "
                    "when model.fc_output_dim > 0", check=_check_seqpool),
    "none": AggregationSpec(
        "none", (FEATURE_MAP,), build=lambda mc, shapes: Identity(shapes.sequence),
        size=lambda mc, shapes: shapes.map_channels * shapes.map_hw[0] * shapes.map_hw[1],
        description="the map itself, flattened (no FC)", check=_check_none),
    "rrm": AggregationSpec(
        "rrm", (FEATURE_MAP,), build=lambda mc, shapes: rrm.RRM(mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim or shapes.map_channels,
        description="RRM: average, LayerNorm, residual MLP, LayerNorm, L2 (FC when "
                    "model.fc_output_dim > 0)", on_sequence=False),
    "crn": AggregationSpec(
        "crn", (FEATURE_MAP,),
        build=lambda mc, shapes: crn.CRN(mc.netvlad_clusters, mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim or mc.netvlad_clusters * shapes.map_channels,
        description="CRN: NetVLAD weighted by a contextual mask (even map sizes; FC when "
                    "model.fc_output_dim > 0)",
        keys=("model.netvlad_clusters",), check=_check_crn, data_init="kmeans",
        on_sequence=False, frozen=lambda mc: ("crn/acc_w",)),
    "salad": AggregationSpec(
        "salad", (FEATURE_MAP, PREFIX),
        build=lambda mc, shapes: salad.Salad(**mc.salad.to_dict()),
        size=lambda mc, shapes: mc.salad.out_dim or (
            mc.salad.token_dim + mc.salad.num_clusters * mc.salad.cluster_dim),
        description="SALAD: Sinkhorn assignment of the patches to model.salad.num_clusters "
                    "clusters, plus the cls token (64 x 128 + 256 = 8448)",
        keys=("model.salad.",), check=_check_salad),
    "boq": AggregationSpec(
        "boq", (FEATURE_MAP,), build=lambda mc, shapes: boq.BoQ(**mc.boq.to_dict()),
        size=lambda mc, shapes: mc.boq.proj_channels * mc.boq.row_dim,
        description="Bag-of-Queries: learned queries attending to the map (proj_channels x "
                    "row_dim)",
        keys=("model.boq.",), check=_check_boq),
    "mixvpr": AggregationSpec(
        "mixvpr", (FEATURE_MAP,),
        build=lambda mc, shapes: mixvpr.MixVPR(shapes.map_hw[0] * shapes.map_hw[1],
                                               **mc.mixvpr.to_dict()),
        size=lambda mc, shapes: mc.mixvpr.out_channels * mc.mixvpr.out_rows,
        description="MixVPR: feature mixers over the map's positions (out_channels x out_rows; "
                    "the training image size only)",
        keys=("model.mixvpr.",), check=_check_mixvpr, fixed_grid=True),
}


def spec(name: str) -> AggregationSpec:
  """The aggregation `name`; ValueError listing the valid names."""
  if name not in AGGREGATIONS:
    raise ValueError(f"model.aggregation={name!r} is not valid; expected one of "
                     f"{', '.join(AGGREGATIONS)}")
  return AGGREGATIONS[name]


def fitting(shapes: FeatureShapes) -> list[str]:
  """The aggregations a backbone that gives `shapes` can feed."""
  return [n for n, s in AGGREGATIONS.items() if set(s.consumes) <= set(shapes.outputs)]


def check_pair(model_config, shapes: FeatureShapes) -> AggregationSpec:
  """The spec of model.aggregation after checking that the backbone feeds it and that its
  own settings hold; ValueError naming the settings otherwise."""
  mc = model_config
  agg = spec(backbones.aggregation_name(mc))
  missing = [k for k in agg.consumes if k not in shapes.outputs]
  if missing:
    gives = " and ".join(DESCRIBED[k] for k in shapes.outputs)
    raise ValueError(f"model.aggregation={agg.name} reads {DESCRIBED[missing[0]]}, but "
                     f"model.backbone={mc.backbone} gives {gives}: use one of "
                     f"{', '.join(fitting(shapes))}")
  if shapes.sequence and not agg.on_sequence:
    raise ValueError(f"model.aggregation={agg.name} needs a 4-D map, but model.backbone="
                     f"{mc.backbone} gives a token sequence (the original crashes): use one of "
                     f"{', '.join(n for n in fitting(shapes) if AGGREGATIONS[n].on_sequence)}")
  agg.check(mc, shapes)
  return agg


def check_other_size(model_config, shapes: FeatureShapes, other: FeatureShapes,
                     setting: str) -> None:
  """ValueError when the aggregation cannot take inputs of another size than it was built
  for (`other`, e.g. eval.image_size's)."""
  agg = check_pair(model_config, other)
  if agg.fixed_grid and other.map_hw != shapes.map_hw:
    raise ValueError(f"{setting} gives a {other.map_hw[0]}x{other.map_hw[1]} map, but "
                     f"model.aggregation={agg.name} is sized for the training images' "
                     f"{shapes.map_hw[0]}x{shapes.map_hw[1]}: evaluate at data.image_size")


def frozen_modules(model_config) -> tuple[str, ...]:
  """Paths under "net" of the aggregation's parameters that do not learn."""
  agg = spec(backbones.aggregation_name(model_config))
  return tuple(f"aggregation/{p}" for p in agg.frozen(model_config))


def build_aggregation(model_config, shapes: FeatureShapes) -> tuple[nn.Module, int]:
  """(module, descriptor size) of model.aggregation for a backbone that gives `shapes`."""
  agg = check_pair(model_config, shapes)
  return agg.build(model_config, shapes), agg.size(model_config, shapes)
