r"""boq_dinov2_gsv: the authors' GSV-Cities training with the multi-similarity loss (configs/recipes.py,
gsv; docs/vpr_training.md).

  python -m vgssl_jax.main --config configs/boq_dinov2_gsv.py --workdir runs/boq_dinov2_gsv \
      --config.data.root=/path/to/datasets \
      --config.model.pretrained=dinov2_vitb14_pretrain.pth
"""

from recipes import gsv  # configs/recipes.py


def get_config():
  return gsv("boq_dinov2_gsv")
