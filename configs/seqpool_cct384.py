r"""seqpool_cct384: the supervised benchmark's CCT pair, CCT-14/7x2-384 + SeqPool at 384x384
(the size its position embedding is made for), trained with the triplet loss on MSLS as
train.py's defaults (partial mining, 4 queries x 10 negatives, Adam 1e-5); `--trunc_te 8
--freeze_te 1` as the benchmark's best CCT runs (the first 8 blocks kept, the tokenizer,
embedding and blocks 0-1 frozen).

  python -m vgssl_jax.main --config configs/seqpool_cct384.py --workdir runs/seqpool_cct384 \
      --config.data.root=/path/to/datasets --config.model.pretrained=cct_14_7x2_384_imagenet.pth
"""

from recipes import supervised  # configs/recipes.py


def get_config():
  c = supervised("triplet", "msls", "cct384")
  c.model.aggregation, c.model.fc_output_dim = "seqpool", 0
  c.model.trunc_te, c.model.freeze_te = 8, 1
  c.data.image_size = (384, 384)
  t = c.train
  t.mining, t.neg_samples_num, t.negs_num_per_query = "partial", 1000, 10
  t.lr, t.batch_size, t.infer_batch_size = 1e-5, 4, 32
  t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 100, 3, 5000, 1000
  c.eval.split = "val"
  return c
