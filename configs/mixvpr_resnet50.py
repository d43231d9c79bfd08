r"""mixvpr_resnet50: MixVPR with ResNet-50 cut after layer3 (1024 x 4 = 4096-d), the release
resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt (configs/recipes.py, PUBLISHED;
docs/vpr_models.md).

  python -m vgssl_jax.evaluate --config configs/mixvpr_resnet50.py \
      --checkpoint 'resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt' \
      --config.data.root=/path/to/datasets \
      --config.eval.datasets=pitts30k,msls,tokyo247,nordland \
      --workdir runs/eval_mixvpr_resnet50
"""

from recipes import published  # configs/recipes.py


def get_config():
  return published("mixvpr_resnet50")
