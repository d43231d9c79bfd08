"""Config checks run before anything is compiled; the method configs hold the original's
final settings."""

import os

import pytest

from tests.conftest import REPO
from vgssl_jax.checks import validate
from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError


def load(name):
  from vgssl_jax.cli import load_config  # as the commands load a config file
  return load_config(os.path.join(REPO, "configs", f"{name}.py"))


# docs/original.md §Stage-1 recipes, "final" (ResNet-50, FC 1024, batch 64): n_layers,
# projection, mining, NEG, NEGQ, aug
FINAL = {"simclr": (1, 1024, "partial", 1000, 1, True), "mocov2": (0, 1024, "random", 0, 0, False),
         "byol": (2, 4096, "random", 0, 0, True), "simsiam": (2, 4096, "random", 0, 0, True),
         "bt": (2, 2048, "partial", 1000, 1, True), "vicreg": (2, 4096, "partial", 1000, 1, True)}


@pytest.mark.parametrize("method", sorted(FINAL))
def test_method_configs_hold_the_final_settings(method):
  c = load(f"{method}_msls")
  validate(c)
  n_layers, proj, mode, neg, negq, aug = FINAL[method]
  assert (c.method, c.model.backbone, c.model.fc_output_dim) == (method, "resnet50conv5", 1024)
  assert (c.model.n_layers, c.train.mining, c.train.neg_samples_num) == (n_layers, mode, neg)
  assert c.train.negs_num_per_query == negq and c.train.pair_negative
  if n_layers:
    assert c.model.projection_size == proj
  assert (c.train.random_resized_crop == 0.25) == aug and c.train.horizontal_flip == aug
  assert (c.train.lr, c.train.batch_size, c.data.image_size) == (1e-5, 64, (480, 640))
  assert c.train.queries_per_epoch == 10000 and c.train.val_every == 10


# docs/original.md §Stage-1 recipes, DeiT-S (batch 32, FC 256, 1000 epochs, no augmentation):
# n_layers, projection, mining, NEG, NEGQ
FINAL_DEIT = {"simclr": (1, 1024, "partial", 1000, 1), "mocov2": (0, None, "random", 0, 0),
              "byol": (2, 4096, "random", 0, 0), "simsiam": (2, 4096, "random", 0, 0),
              "bt": (2, 2048, "partial", 1000, 1), "vicreg": (2, 4096, "partial", 1000, 1)}


@pytest.mark.parametrize("method", sorted(FINAL_DEIT))
def test_deit_configs_hold_the_final_deit_settings(method):
  c = load(f"{method}_msls_deit")
  validate(c)
  n_layers, proj, mode, neg, negq = FINAL_DEIT[method]
  assert (c.method, c.model.backbone, c.model.fc_output_dim) == (method, "deit", 256)
  assert (c.model.vit.embed_dim, c.model.vit.depth, c.model.vit.num_heads) == (384, 12, 6)
  assert (c.model.n_layers, c.train.mining, c.train.neg_samples_num) == (n_layers, mode, neg)
  assert c.train.negs_num_per_query == negq and c.train.pair_negative
  if n_layers:
    assert c.model.projection_size == proj
  assert c.train.random_resized_crop == 0.0 and not c.train.horizontal_flip
  assert (c.train.lr, c.train.batch_size, c.train.epochs) == (1e-5, 32, 1000)
  assert c.data.image_size == (480, 640) and c.eval.split == "val"


@pytest.mark.parametrize("method", sorted(FINAL))
def test_demo_accepts_every_method(method):
  c = load("demo")
  c.method = method
  validate(c)


def bad(**changes):
  c = base_config()
  for key, value in changes.items():
    section, name = key.split("__") if "__" in key else (None, key)
    (c[section] if section else c)[name] = value
  with pytest.raises(ConfigError) as err:
    validate(c)
  return str(err.value)


def test_impossible_settings_are_rejected_with_the_fix():
  assert "method='swav'" in bad(method="swav")
  assert "n_layers=4" in bad(model__n_layers=4)
  assert "n_layers=-1" in bad(model__n_layers=-1)
  assert "n_layers=3" in bad(method="simclr", model__n_layers=3)
  assert "must be even" in bad(train__pair_negative=True, train__neg_samples_num=10,
                               train__batch_size=63)
  assert "queue_size=1000" in bad(method="mocov2", loss__queue_size=1000)
  assert "larger than the partial-mining pool" in bad(
      train__mining="partial", train__neg_samples_num=5, train__negs_num_per_query=10)
  assert "train.mining='hard'" in bad(train__mining="hard")
  assert "multiples of 16" in bad(model__backbone="deit", data__image_size=(100, 128))
  c = base_config()
  c.model.backbone = "deit"
  c.model.vit.num_heads = 5  # 384 is not a multiple of 5
  with pytest.raises(ConfigError, match="model.vit.embed_dim=384 must be a positive multiple"):
    validate(c)
  assert "eval.backend" in bad(eval__backend="annoy")
  assert "model.dtype" in bad(model__dtype="float16")
  assert "train.positive_radius=-1" in bad(train__positive_radius=-1.0)
  assert "eval.positive_radius=0" in bad(eval__positive_radius=0.0)
  assert "train.lr=0" in bad(train__lr=0.0)
  assert "grad_accum_steps=3 must divide the 32 items" in bad(train__batch_size=32,
                                                              train__grad_accum_steps=3)
  # with pair negatives a step holds half the batch in items: 32 -> 16, and 32 % 16 == 0
  assert "must divide the 16 items" in bad(train__batch_size=32, train__grad_accum_steps=32,
                                           train__pair_negative=True, train__neg_samples_num=10,
                                           train__mining="partial")


@pytest.mark.parametrize("name", ["salad_gsv", "boq_dinov2_gsv", "mixvpr_gsv",
                                  "vicreg_msls_dinov2_salad", "demo_gsv"])
def test_todays_recipes_validate_and_hold_the_authors_settings(name):
  from vgssl_jax.checks import validate
  c = load(name)
  validate(c)
  if name == "salad_gsv":
    assert (c.method, c.train.batch_size, c.data.gsv.img_per_place) == ("ms", 60, 4)
    assert (c.train.optimizer, c.train.lr, c.train.weight_decay) == ("adamw", 6e-5, 9.5e-9)
    assert (c.train.lr_schedule, c.train.lr_end_factor, c.train.lr_decay_steps) == (
        "linear", 0.2, 4000)
    assert (c.model.train_blocks, tuple(c.data.image_size), tuple(c.eval.image_size)) == (
        4, (224, 224), (322, 322))
    assert (c.train.epochs, c.model.dtype, c.train.save_best) == (4, "bfloat16", 0)
  if name == "boq_dinov2_gsv":
    assert (c.train.batch_size, c.train.lr, c.train.weight_decay, c.train.epochs) == (
        128, 1e-4, 1e-4, 40)
    assert (c.train.warmup_epochs, tuple(c.train.schedule), c.model.train_blocks) == (
        10, (10, 20), 2)
    assert (c.data.gsv.interpolation, c.data.gsv.randaugment_magnitude, c.data.name) == (
        "bicubic", 15, "msls")
    assert c.model.boq.proj_channels * c.model.boq.row_dim == 8192
  if name == "mixvpr_gsv":
    assert (c.model.backbone, c.model.unfreeze, tuple(c.data.image_size)) == (
        "resnet50conv4", False, (320, 320))
    assert (c.train.optimizer, c.train.lr, c.train.warmup_steps, c.train.lr_gamma) == (
        "sgd", 0.05, 650, 0.3)


def test_an_evaluation_size_the_aggregation_cannot_take_is_refused():
  from vgssl_jax.checks import validate
  c = load("mixvpr_gsv")
  c.eval.image_size = (384, 384)   # MixVPR's mixers are sized for the 320x320 map
  with pytest.raises(ConfigError, match="eval.image_size gives a 24x24 map.*mixvpr.*20x20"):
    validate(c)
  c = load("salad_gsv")            # SALAD takes any size: 224 training, 322 evaluation
  validate(c)
