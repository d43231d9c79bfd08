"""Stage 2, job (c): the R2Former re-ranking of a stage-1 DeiT-S, trained on MSLS with the
global model frozen and negatives from the precomputed hard-negative lists (see
configs/recipes.py, stage2).

  python -m vgssl_jax.main --config configs/rerank_msls_deit.py --workdir runs/rerank_msls_deit \
      --config.data.root=/path/to/datasets --config.train.init_from=runs/<stage-1 DeiT run>
"""

from recipes import stage2  # configs/recipes.py


def get_config():
  return stage2("rerank_msls")
