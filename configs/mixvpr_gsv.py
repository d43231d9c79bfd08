r"""mixvpr_gsv: the authors' GSV-Cities training with the multi-similarity loss (configs/recipes.py,
gsv; docs/vpr_training.md).

  python -m vgssl_jax.main --config configs/mixvpr_gsv.py --workdir runs/mixvpr_gsv \
      --config.data.root=/path/to/datasets \
      --config.model.pretrained=resnet50-0676ba61.pth   # torchvision's ImageNet weights
"""

from recipes import gsv  # configs/recipes.py


def get_config():
  return gsv("mixvpr_gsv")
