"""The built-in demo: VICReg with GeoPairs on the synthetic geo dataset, on any CPU.

Generates the synthetic dataset under data.root if absent, evaluates the untrained
network, trains a narrow ResNet-18 for a few epochs and evaluates again.

  python -m vgssl_jax.main --config configs/demo.py --workdir runs/demo
"""

from vgssl_jax.config import base_config


def get_config():
  c = base_config()
  c.method = "vicreg"
  c.data.name = "synthetic"
  c.data.image_size = (96, 128)
  c.model.backbone = "resnet18conv4"
  c.model.width = 16
  c.model.fc_output_dim = 256
  c.model.n_layers = 2
  c.model.projection_size = 1024
  # with --config.model.backbone=deit: a small DeiT (the same blocks as DeiT-S, 96 wide)
  c.model.vit.update({"embed_dim": 96, "depth": 4, "num_heads": 3})
  # with --config.model.backbone=dinov2_vits14: a tiny DINOv2 (96 wide, 4 blocks, 3 heads,
  # all learning) and, with --config.model.aggregation=salad, a small SALAD; DINOv2's 14-pixel
  # patches need --config.data.image_size=98,126
  c.model.dinov2.update({"embed_dim": 96, "depth": 4, "num_heads": 3, "img_size": 98})
  c.model.salad.update({"num_clusters": 16, "cluster_dim": 16, "token_dim": 64, "hidden": 128})
  # the rest of the original's zoo at the demo's scale: vgg16 and alexnet take model.width;
  # cct384 (square images: --config.data.image_size=96,96) and vit (224 or 384:
  # --config.data.image_size=224,224) get these tiny sizes
  c.model.cct.update({"embed_dim": 96, "depth": 4, "num_heads": 3, "img_size": 96})
  c.model.hf_vit.update({"embed_dim": 96, "depth": 4, "num_heads": 3})
  c.train.epochs = 8
  c.train.batch_size = 32
  c.train.lr = 1e-3
  c.train.queries_per_epoch = 1200
  c.train.infer_batch_size = 128
  # --config.method=triplet (or sare_ind, sare_joint): per epoch two mining rounds of
  # train.cache_refresh_rate = 1000 queries (the original samples a full round each time)
  c.train.val_every = 0
  # MoCo (--config.method=mocov2): a queue of the demo's scale (the original's 65,536 keys
  # would outlast the demo's 9,600 keys, leaving the random initial queue as negatives)
  c.loss.queue_size = 2048
  c.eval.split = "test"
  c.eval.before = True
  return c
