"""Stage 2, job (e): the jointly fine-tuned DeiT-S + R2Former of job (d) fine-tuned on
Pitts30k (see configs/recipes.py, stage2).

  python -m vgssl_jax.main --config configs/finetune_pitts30k_after_msls_deit.py \
      --workdir runs/finetune_pitts30k_after_msls_deit \
      --config.data.root=/path/to/datasets --config.train.init_from=runs/finetune_msls_deit
"""

from recipes import stage2  # configs/recipes.py


def get_config():
  return stage2("finetune_pitts30k")
