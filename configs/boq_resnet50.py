r"""boq_resnet50: Bag-of-Queries with ResNet-50 cut after layer3 (512 x 32 = 16384-d), the
release resnet50_16384.pth (configs/recipes.py, PUBLISHED; docs/vpr_models.md).

  python -m vgssl_jax.evaluate --config configs/boq_resnet50.py --checkpoint resnet50_16384.pth \
      --config.data.root=/path/to/datasets \
      --config.eval.datasets=pitts30k,msls,tokyo247,nordland \
      --workdir runs/eval_boq_resnet50
"""

from recipes import published  # configs/recipes.py


def get_config():
  return published("boq_resnet50")
