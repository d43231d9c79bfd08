"""The stage-2 demo: the whole chain on the synthetic dataset in one command, on any CPU.

  1. stage 1 (into <workdir>/init_run): the built-in demo's VICReg on a narrow ResNet-18
     cut after conv5 (local tokens need layer3 and layer4), on the synthetic world with
     shared facade styles (data.synthetic.styles=6, under datasets/styled);
  2. the hard negatives of every training query, precomputed with that model;
  3. re-ranking training (job (c) in small): the global model frozen, the local head and the
     R2Former trained with the CE loss on (query, positive, 4 hard negatives) tuples;
  4. evaluation of the global top 20 and of its re-ranked order (results.json "after":
     recall@N and reranked_recall@N).

  python -m vgssl_jax.main --config configs/demo_rerank.py --workdir runs/demo_rerank
"""

from demo import get_config as demo_config  # configs/demo.py
from vgssl_jax.config import base_config


def _stage1():
  c = demo_config()
  c.model.backbone = "resnet18conv5"
  c.eval.before = False
  # the synthetic world with facade styles shared by all its splits, where places differ in
  # which landmarks stand where: the global descriptor confuses look-alike places, local
  # matching can not (README, "Stage 2")
  c.data.root = "datasets/styled"
  c.data.synthetic.styles = 6
  return c


def get_config():
  c = base_config()
  c.init_run = _stage1()
  s1 = c.init_run
  c.method = "r2former"
  c.data.name, c.data.root = "synthetic", s1.data.root
  c.data.synthetic = s1.data.synthetic
  c.data.image_size = s1.data.image_size
  c.model.backbone, c.model.width = s1.model.backbone, s1.model.width
  c.model.fc_output_dim = s1.model.fc_output_dim
  c.model.n_layers = 0
  c.model.local_dim, c.model.num_local = 32, 48   # a 96x128 image has 6 x 8 layer3 tokens
  c.rerank.fix, c.rerank.loss, c.rerank.neg_hardness = 1, "ce", 20
  t = c.train
  # 4 hard negatives per query and crops of the query: with 1 negative and no augmentation
  # the R2Former fits the training tuples (loss 0.02) and re-ranks worse than the global order
  t.mining, t.negs_num_per_query = "global", 4
  t.lr, t.optimizer, t.cosine_scheduler, t.warmup_epochs = 5e-4, "adamw", True, 1
  t.epochs, t.batch_size, t.queries_per_epoch, t.cache_refresh_rate = 8, 16, 1200, 1200
  t.infer_batch_size = 128
  t.random_resized_crop, t.horizontal_flip = 0.25, False  # a flip would mirror the layout
  t.val_every = 0
  c.eval.split = "test"
  c.eval.rerank_top, c.eval.rerank_batch_size = 20, 16
  c.eval.before = True
  return c
