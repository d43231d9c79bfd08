"""bt: the original's final ResNet-50 setting on MSLS (see vgssl_jax.config.MSLS_FINAL).

  python -m vgssl_jax.main --config configs/bt_msls.py --workdir runs/bt_msls \
      --config.data.root=/path/to/datasets
"""

from vgssl_jax.config import msls_final


def get_config():
  return msls_final("bt")
