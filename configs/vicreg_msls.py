"""VICReg, the original's final ResNet-50 setting on MSLS (spec §1.1 "Final", §5).

resnet50conv5 + GeM + FC 1024, projector n_layers 2 / 4096, Adam lr 1e-5, 480x640,
64 pairs per step, 10,000 queries per epoch, RRC 0.25 + whole-batch flip, 200 epochs,
validation every 10. The mining cache uses the projector output (n_layers > 0), as the
original does.

  python -m vgssl_jax.main --config configs/vicreg_msls.py --workdir runs/vicreg_msls
"""

from vgssl_jax.config import base_config


def get_config():
  c = base_config()
  c.method = "vicreg"
  c.data.name = "msls"
  c.data.image_size = (480, 640)
  c.model.backbone = "resnet50conv5"
  c.model.fc_output_dim = 1024
  c.model.n_layers = 2
  c.model.projection_size = 4096
  c.train.epochs = 200
  c.train.batch_size = 64
  c.train.lr = 1e-5
  c.train.queries_per_epoch = 10000
  c.train.random_resized_crop = 0.25
  c.train.horizontal_flip = True
  c.eval.split = "val"
  return c
