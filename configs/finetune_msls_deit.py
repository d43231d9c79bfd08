"""Stage 2, job (d): joint fine-tuning of the global DeiT-S (triplet) and its R2Former (CE)
on MSLS, from the run of job (c) (see configs/recipes.py, stage2).

  python -m vgssl_jax.main --config configs/finetune_msls_deit.py --workdir runs/finetune_msls_deit \
      --config.data.root=/path/to/datasets --config.train.init_from=runs/rerank_msls_deit
"""

from recipes import stage2  # configs/recipes.py


def get_config():
  return stage2("finetune_msls")
