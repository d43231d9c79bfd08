r"""boq_dinov2: Bag-of-Queries with DINOv2-B/14 (384 x 32 = 12288-d), the release
dinov2_12288.pth (configs/recipes.py, PUBLISHED; docs/vpr_models.md).

  python -m vgssl_jax.evaluate --config configs/boq_dinov2.py --checkpoint dinov2_12288.pth \
      --config.data.root=/path/to/datasets \
      --config.eval.datasets=pitts30k,msls,tokyo247,nordland \
      --workdir runs/eval_boq_dinov2
"""

from recipes import published  # configs/recipes.py


def get_config():
  return published("boq_dinov2")
