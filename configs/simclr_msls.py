"""simclr: the original's final ResNet-50 setting on MSLS (see configs/recipes.py, MSLS_FINAL).

  python -m vgssl_jax.main --config configs/simclr_msls.py --workdir runs/simclr_msls \
      --config.data.root=/path/to/datasets
"""

from recipes import msls_final  # configs/recipes.py


def get_config():
  return msls_final("simclr")
