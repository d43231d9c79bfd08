r"""netvlad_vgg16: the supervised benchmark's classic pair, VGG16 + NetVLAD (64 clusters,
k-means initialised; conv1_1 .. conv4_3 frozen) trained with the triplet loss on Pitts30k
as train.py's defaults (partial mining, 4 queries x 10 negatives, Adam 1e-5, 480x640).

  python -m vgssl_jax.main --config configs/netvlad_vgg16.py --workdir runs/netvlad_vgg16 \
      --config.data.root=/path/to/datasets --config.model.pretrained=vgg16-397923af.pth
"""

from recipes import supervised  # configs/recipes.py


def get_config():
  c = supervised("triplet", "pitts30k", "vgg16")
  c.model.aggregation, c.model.fc_output_dim = "netvlad", 0
  t = c.train
  t.mining, t.neg_samples_num, t.negs_num_per_query = "partial", 1000, 10
  t.lr, t.batch_size, t.infer_batch_size = 1e-5, 4, 32
  t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 100, 3, 5000, 1000
  return c
