"""The supervised triplet baseline with deit on MSLS (see configs/recipes.py, triplet_msls).

  python -m vgssl_jax.main --config configs/triplet_msls_deit.py --workdir runs/triplet_msls_deit \
      --config.data.root=/path/to/datasets --config.model.pretrained=<ImageNet weights>
"""

from recipes import triplet_msls  # configs/recipes.py


def get_config():
  return triplet_msls("deit")
