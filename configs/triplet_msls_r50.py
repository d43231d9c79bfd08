"""The supervised triplet baseline with resnet50conv5 on MSLS (see configs/recipes.py, triplet_msls).

  python -m vgssl_jax.main --config configs/triplet_msls_r50.py --workdir runs/triplet_msls_r50 \
      --config.data.root=/path/to/datasets --config.model.pretrained=<ImageNet weights>
"""

from recipes import triplet_msls  # configs/recipes.py


def get_config():
  return triplet_msls("resnet50conv5")
