"""The VG-SSL network: backbone F_l -> aggregation F_g (descriptor) -> projector F_p."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.aggregation import Aggregation
from vgssl_jax.models.heads import PROJECTOR_FAMILY, Projector
from vgssl_jax.models.layers import Dtype
from vgssl_jax.models.resnet import ResNet, parse_backbone


class GeoLocalizationNet(nn.Module):
  """Images (N, H, W, 3), normalised, -> {"descriptor", "projection"}.

  `descriptor` (N, fc_output_dim) is the L2-normalised retrieval descriptor (the
  pre-projector output, used for evaluation). `projection` is the projector output
  (N, projection_size), or the descriptor itself when n_layers == 0; it feeds the SSL
  losses and the mining cache. With project=False the projector is skipped.
  """
  backbone: str = "resnet50conv5"
  width: int = 64
  fc_output_dim: int = 1024
  method: str = "vicreg"
  n_layers: int = 2
  projection_size: int = 4096
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, project: bool = True) -> dict:
    depth, last_stage = parse_backbone(self.backbone)
    features = ResNet(depth, last_stage, self.width, self.dtype, name="backbone")(images, train)
    if features.dtype != jnp.float32:
      # Materialise the bfloat16 feature map before the float32 aggregation: with the two
      # fused, XLA's CPU compiler produced NaN descriptors for batches of 128 (jax 0.12.0.1;
      # tests/test_models.py checks it). The barrier costs one buffer.
      features = jax.lax.optimization_barrier(features)
    descriptor = Aggregation(self.fc_output_dim, name="aggregation")(features)
    out = {"descriptor": descriptor}
    if project:
      out["projection"] = Projector(PROJECTOR_FAMILY[self.method], self.n_layers,
                                    self.projection_size, self.dtype, name="projector")(
                                        descriptor, train)
    return out


def build_model(model_config, method: str) -> GeoLocalizationNet:
  """GeoLocalizationNet from the `model` section of a config."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_config.dtype]
  return GeoLocalizationNet(
      backbone=model_config.backbone, width=model_config.width,
      fc_output_dim=model_config.fc_output_dim, method=method,
      n_layers=model_config.n_layers, projection_size=model_config.projection_size,
      dtype=dtype)


def init_variables(model: GeoLocalizationNet, key: jax.Array, image_size) -> dict:
  """Parameters and batch statistics for (H, W) = image_size inputs."""
  dummy = jnp.zeros((2, *image_size, 3), jnp.float32)
  return dict(model.init(key, dummy, train=False))
