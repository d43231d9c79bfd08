r"""megaloc: MegaLoc (DINOv2-B/14, SALAD of 64 x 256 + 256, linear to 8448), the release
model.safetensors (configs/recipes.py, PUBLISHED; docs/vpr_models.md).

  python -m vgssl_jax.evaluate --config configs/megaloc.py --checkpoint model.safetensors \
      --config.data.root=/path/to/datasets \
      --config.eval.datasets=pitts30k,msls,tokyo247,nordland \
      --workdir runs/eval_megaloc
"""

from recipes import published  # configs/recipes.py


def get_config():
  return published("megaloc")
