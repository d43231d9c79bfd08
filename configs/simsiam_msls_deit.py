"""simsiam with DeiT-S: the original's final DeiT setting on MSLS (configs/recipes.py, MSLS_FINAL_DEIT).

  python -m vgssl_jax.main --config configs/simsiam_msls_deit.py --workdir runs/simsiam_msls_deit \
      --config.data.root=/path/to/datasets --config.model.pretrained=deit_small_distilled.pth
"""

from recipes import msls_final  # configs/recipes.py


def get_config():
  return msls_final("simsiam", backbone="deit")
