"""Fine-tuning a stage-1 resnet50conv5 model on Pitts30k with the triplet loss (the original's train.sh
job (a); see configs/recipes.py, finetune_pitts30k).

  python -m vgssl_jax.main --config configs/finetune_pitts30k_r50.py --workdir runs/ft_pitts30k_r50 \
      --config.data.root=/path/to/datasets --config.train.init_from=runs/<stage-1 run>
"""

from recipes import finetune_pitts30k  # configs/recipes.py


def get_config():
  return finetune_pitts30k("resnet50conv5")
