r"""off_the_shelf: the original's --off_the_shelf networks, ResNet-50 (or --config.model.
backbone=resnet101conv5) + GeM + FC 2048, as cirtorch (Radenović et al.: radenovic_sfm,
radenovic_gldv1) and Naver's deep-image-retrieval (AP-GeM) publish them: GeM, L2, the
whitening FC, L2. Their files load with --checkpoint (nothing is downloaded):

  python -m vgssl_jax.evaluate --config configs/off_the_shelf.py \
      --checkpoint rSfM120k-tl-resnet50-gem-w-97bf910.pth --workdir runs/eval_sfm \
      --config.data.root=/path/to/datasets --config.eval.datasets=pitts30k
"""

from recipes import supervised  # configs/recipes.py


def get_config():
  c = supervised("triplet", "msls", "resnet50conv5")
  c.model.aggregation, c.model.l2, c.model.fc_output_dim = "gem", "after_pool", 2048
  c.eval.split = "val"
  return c
