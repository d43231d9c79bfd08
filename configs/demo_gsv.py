"""The GSV demo: a tiny DINOv2 + SALAD trained with the multi-similarity loss on the synthetic
GSV-Cities world (places seen 4-6 times under other conditions), then tested on the synthetic
`@` test split, before and after, on any CPU (docs/vpr_training.md).

  python -m vgssl_jax.main --config configs/demo_gsv.py --workdir runs/demo_gsv
"""

from vgssl_jax.config import base_config


def get_config():
  c = base_config()
  c.method = "ms"
  c.data.name = "synthetic"          # validation and test: the synthetic `@` splits
  c.data.gsv.name = "synthetic_gsv"  # training: the synthetic GSV-Cities world
  c.data.image_size = (98, 126)      # multiples of DINOv2's 14-pixel patches
  c.model.backbone = "dinov2_vits14"
  c.model.dinov2.update({"embed_dim": 96, "depth": 4, "num_heads": 3, "img_size": 98})
  c.model.train_blocks = 0           # a tiny network trained from scratch: all blocks learn
  c.model.aggregation = "salad"
  c.model.salad.update({"num_clusters": 16, "cluster_dim": 16, "token_dim": 64, "hidden": 128})
  c.model.fc_output_dim = 0
  c.model.n_layers = 0
  c.train.epochs = 15
  c.train.batch_size = 24            # places per step (x 4 images)
  c.train.optimizer = "adamw"
  c.train.lr = 1e-3
  c.train.weight_decay = 1e-4
  c.train.lr_schedule = "constant"
  c.train.infer_batch_size = 128
  c.train.val_every = 0
  c.train.log_every = 10
  c.eval.split = "test"
  c.eval.before = True
  return c
