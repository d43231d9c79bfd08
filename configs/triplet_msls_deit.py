"""The supervised triplet baseline with deit on MSLS (see vgssl_jax.config.triplet_msls).

  python -m vgssl_jax.main --config configs/triplet_msls_deit.py --workdir runs/triplet_msls_deit \
      --config.data.root=/path/to/datasets --config.model.pretrained=<ImageNet weights>
"""

from vgssl_jax.config import triplet_msls


def get_config():
  return triplet_msls("deit")
