r"""vicreg_msls_dinov2_salad: VG-SSL's final VICReg recipe on MSLS with DINOv2-B/14 + SALAD
(configs/recipes.py; docs/vpr_training.md).

  python -m vgssl_jax.main --config configs/vicreg_msls_dinov2_salad.py \
      --workdir runs/vicreg_msls_dinov2_salad --config.data.root=/path/to/datasets \
      --config.model.pretrained=dinov2_vitb14_pretrain.pth
"""

from recipes import vicreg_msls_dinov2_salad  # configs/recipes.py


def get_config():
  return vicreg_msls_dinov2_salad()
