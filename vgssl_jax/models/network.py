"""The retrieval network: backbone F_l -> aggregation F_g (descriptor) -> projector F_p.

Which backbone, aggregation and projector family are used is decided by `build_model`
(backbones come from models.registry, the projector family from the objective), so the
network itself knows no backbone or method names.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models import registry
from vgssl_jax.models.aggregation import Aggregation, descriptor_dim
from vgssl_jax.models.heads import Projector
from vgssl_jax.models.layers import Dtype

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class GeoLocalizationNet(nn.Module):
  """Images (N, H, W, 3), normalised, -> {"descriptor", "projection"}.

  `descriptor` (N, descriptor_dim) is the L2-normalised retrieval descriptor (the
  pre-projector output, used for evaluation). `projection` is the projector output, or
  the descriptor itself when the projector has no layers; it feeds the SSL losses and the
  mining cache. With project=False the projector is skipped; feature_map=True adds the
  backbone's output. `aggregation` is None for backbones that output the descriptor
  themselves.
  """
  backbone: nn.Module
  aggregation: nn.Module | None
  projector: Projector
  descriptor_dim: int
  dtype: Dtype = jnp.float32

  @property
  def projection_dim(self) -> int:
    return self.projector.size if self.projector.n_layers > 0 else self.descriptor_dim

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, project: bool = True,
               feature_map: bool = False) -> dict:
    features = self.backbone(images, train)
    if self.aggregation is None:
      descriptor = features
    else:
      if features.dtype != jnp.float32:
        # Materialise the bfloat16 feature map before the float32 aggregation: with the two
        # fused, XLA's CPU compiler produced NaN descriptors for batches of 128 (jax 0.12.0.1;
        # tests/test_models.py checks it). The barrier costs one buffer.
        features = jax.lax.optimization_barrier(features)
      descriptor = self.aggregation(features)
    out = {"descriptor": descriptor}
    if feature_map:  # the backbone's map (NetVLAD's k-means initialisation samples it)
      out["feature_map"] = features.astype(jnp.float32)
    if project:
      out["projection"] = self.projector(descriptor, train)
    return out


def build_model(model_config, projector_family: str, image_size) -> GeoLocalizationNet:
  """GeoLocalizationNet from the `model` section of a config, for (H, W) = image_size
  training inputs (a ViT's position grid); `projector_family` is the objective's
  (objectives.registry), None for objectives without a projector."""
  mc = model_config
  dtype = DTYPES[mc.dtype]
  backbone, output = registry.build_backbone(mc, dtype, tuple(image_size))
  if output == registry.FEATURE_MAP:
    aggregation = Aggregation(mc.fc_output_dim, mc.aggregation, mc.l2, mc.netvlad_clusters)
    size = descriptor_dim(mc.aggregation, mc.fc_output_dim, registry.channels(mc),
                          mc.netvlad_clusters)
  else:
    aggregation, size = None, mc.fc_output_dim
  projector = (Projector(projector_family, mc.n_layers, mc.projection_size, dtype)
               if projector_family else Projector("vicreg", 0, mc.projection_size, dtype))
  return GeoLocalizationNet(backbone, aggregation, projector, size, dtype)


def init_variables(model: GeoLocalizationNet, key: jax.Array, image_size) -> dict:
  """Parameters and batch statistics for (H, W) = image_size inputs."""
  dummy = jnp.zeros((2, *image_size, 3), jnp.float32)
  variables = dict(model.init(key, dummy, train=False))
  variables.setdefault("batch_stats", {})  # a DeiT without BatchNorm in its projector has none
  return variables
