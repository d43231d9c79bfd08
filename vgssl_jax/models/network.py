"""The retrieval network: backbone F_l -> aggregation F_g (descriptor) -> projector F_p.

Which backbone, aggregation and projector family are used is decided by `build_model`
(backbones from models.backbones, aggregations from models.aggregations, the projector
family from the objective): the network wires every pair the same way and knows no
backbone, aggregation or method names.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from collections.abc import Callable

from vgssl_jax.models import aggregations, backbones
from vgssl_jax.models.features import Features
from vgssl_jax.models.heads import Projector
from vgssl_jax.models.layers import Dense, Dtype
from vgssl_jax.models.non_local import NonLocalBlock
from vgssl_jax.models.r2former import R2Former

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class GeoLocalizationNet(nn.Module):
  """Images (N, H, W, 3), normalised, -> {"descriptor", "projection"}.

  `descriptor` (N, descriptor_dim) is the L2-normalised retrieval descriptor (the
  pre-projector output, used for evaluation): the aggregation of the backbone's Features.
  `projection` is the projector output, or the descriptor itself when the projector has no
  layers; it feeds the SSL losses and the mining cache. With project=False the projector is
  skipped; feature_map=True adds the backbone's feature map.

  Stage 2 (re-ranking) networks also have `local_head` and `Reranker` (an R2Former; both
  named as the original's state-dict keys): local=True adds "local" (N, n, 3 + local_dim),
  the image's local tokens (`local_tokens`, the backbone family's), and `rerank` scores
  (query, candidate) pairs. The local head's input is detached unless `finetune` (the
  original's --finetune), so only it and the R2Former learn from the re-ranking loss.
  `cpu_step`: the XLA option set its CPU training step wants (cpu_env.STEP_OPTIONS).
  """
  backbone: nn.Module
  aggregation: nn.Module
  projector: Projector
  descriptor_dim: int
  dtype: Dtype = jnp.float32
  local_head: nn.Module | None = None
  Reranker: R2Former | None = None  # noqa: N815 (the original's name)
  num_local: int = 500
  finetune: bool = False
  local_tokens: Callable | None = None   # backbones.LocalTokens of the family
  cpu_step: str = ""
  non_local: NonLocalBlock | None = None  # the original's --non_local: one block, applied
  num_non_local: int = 1                  # num_non_local times (its blocks share weights)

  @property
  def projection_dim(self) -> int:
    return self.projector.size if self.projector.n_layers > 0 else self.descriptor_dim

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, project: bool = True,
               feature_map: bool = False, local: bool = False) -> dict:
    if local and self.local_head is None:
      raise ValueError("this network has no local tokens (model.local_dim = 0)")
    features: Features = self.backbone(images, train, tokens=local)
    if self.non_local is not None:
      fmap = features.feature_map
      for _ in range(self.num_non_local):
        fmap, _ = self.non_local(fmap)
      features = features.replace(feature_map=fmap)
    if self.dtype != jnp.float32:
      # Materialise the bfloat16 backbone outputs before the float32 aggregation: with the
      # two fused, XLA's CPU compiler produced NaN descriptors for batches of 128 (jax
      # 0.12.0.1; tests/test_models.py checks it). The barrier costs one buffer.
      features = features.map_arrays(jax.lax.optimization_barrier)
    descriptor = self.aggregation(features, train)
    out = {"descriptor": descriptor}
    if feature_map:  # the backbone's map (NetVLAD's k-means initialisation samples it)
      out["feature_map"] = features.feature_map.astype(jnp.float32)
    if project:
      out["projection"] = self.projector(descriptor, train)
    if local:
      out["local"] = self._local_tokens(images.shape[1:3], features)
    return out

  def _local_tokens(self, image_hw, features: Features) -> jax.Array:
    aggregation_params = self.aggregation.variables.get("params", {})
    feats, coords = self.local_tokens(features, aggregation_params, self.num_local, image_hw)
    if not self.finetune:
      feats = jax.lax.stop_gradient(feats)
    return jnp.concatenate([coords, self.local_head(feats).astype(jnp.float32)], axis=-1)

  def rerank(self, x_global, x_local, y_global, y_local):
    """(logits (B, 2), final_score (B,)) of B (query, candidate) pairs."""
    return self.Reranker(x_global, x_local, y_global, y_local)

  def rerank_logits(self, x_local, y_local):
    """The logits alone (what the re-ranked order is sorted by)."""
    return self.Reranker.logits(x_local, y_local)

  def init_all(self, images: jax.Array, train: bool) -> dict:
    """Touches every submodule (initialisation of a stage-2 network)."""
    out = self(images, train, local=True)
    self.rerank(out["descriptor"], out["local"], out["descriptor"], out["local"])
    return out


def build_model(model_config, projector_family: str, image_size) -> GeoLocalizationNet:
  """GeoLocalizationNet from the `model` section of a config, for (H, W) = image_size
  training inputs (a ViT's position grid); `projector_family` is the objective's
  (objectives.registry), None for objectives without a projector."""
  mc = model_config
  dtype = DTYPES[mc.dtype]
  fam, _ = backbones.family(mc.backbone)
  backbone = backbones.build_backbone(mc, dtype, tuple(image_size))
  aggregation, size = aggregations.build_aggregation(mc, backbones.shapes(mc, image_size))
  projector = (Projector(projector_family, mc.n_layers, mc.projection_size, dtype)
               if projector_family else Projector("vicreg", 0, mc.projection_size, dtype))
  local = {}
  if mc.local_dim:
    backbones.check_local(mc, aggregations.spec(backbones.aggregation_name(mc)))
    local = dict(local_head=Dense(mc.local_dim, dtype=dtype,
                                  kernel_init=nn.initializers.normal(0.01),
                                  bias_init=nn.initializers.zeros),
                 Reranker=R2Former(mc.num_local), num_local=mc.num_local,
                 finetune=bool(mc.finetune), local_tokens=fam.local_tokens)
  # the R2Former's attention is slower with oneDNN's products (cpu_env)
  cpu_step = "" if mc.local_dim else backbones.cpu_step(mc)
  non_local = dict(non_local=NonLocalBlock(mc.channel_bottleneck, dtype, name="non_local"),
                   num_non_local=mc.num_non_local) if mc.non_local else {}
  return GeoLocalizationNet(backbone, aggregation, projector, size, dtype, cpu_step=cpu_step,
                            **local, **non_local)


def check_non_local(model_config, shapes) -> None:
  """ValueError when model.non_local cannot run on what the backbone gives."""
  mc = model_config
  if not mc.non_local:
    return
  if "feature_map" not in shapes.outputs or shapes.sequence:
    raise ValueError(f"model.non_local: the non-local blocks read a 4-D feature map, which "
                     f"model.backbone={mc.backbone} does not give (the original crashes); set "
                     "model.non_local=False")
  if mc.num_non_local < 1 or mc.channel_bottleneck < 1:
    raise ValueError(f"model.num_non_local={mc.num_non_local} and model.channel_bottleneck="
                     f"{mc.channel_bottleneck} must be >= 1")


def init_variables(model: GeoLocalizationNet, key: jax.Array, image_size) -> dict:
  """Parameters and batch statistics for (H, W) = image_size inputs."""
  dummy = jnp.zeros((2, *image_size, 3), jnp.float32)
  method = GeoLocalizationNet.init_all if model.Reranker is not None else None
  variables = dict(model.init(key, dummy, train=False, method=method))
  variables.setdefault("batch_stats", {})  # a DeiT without BatchNorm in its projector has none
  return variables
