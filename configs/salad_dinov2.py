r"""salad_dinov2: SALAD (DINOv2-B/14, 64 x 128 + 256 = 8448-d), the authors' release
dino_salad.ckpt (configs/recipes.py, PUBLISHED; docs/vpr_models.md).

  python -m vgssl_jax.evaluate --config configs/salad_dinov2.py --checkpoint dino_salad.ckpt \
      --config.data.root=/path/to/datasets \
      --config.eval.datasets=pitts30k,msls,tokyo247,nordland \
      --workdir runs/eval_salad_dinov2
"""

from recipes import published  # configs/recipes.py


def get_config():
  return published("salad_dinov2")
