"""The original's recipes (docs/original.md, "Stage-1 recipes", "Supervised training",
"Stage 2") as config functions. The named files beside this one (`vicreg_msls.py`,
`rerank_msls_deit.py`, ...) call them; this file is a config too, big_vision style:

  python -m vgssl_jax.main --config configs/recipes.py:msls_final,vicreg,deit ...

(`get_config("<recipe>,<arguments>")`, the recipes and their arguments below).
"""

import ml_collections

from vgssl_jax.config import base_config


# The original's "Final" stage-1 settings on MSLS (docs/original.md §Stage-1 recipes,
# train_msls_*_final_sbatch.sh): (n_layers, projection_size, mining, neg_samples_num,
# negs_num_per_query, augment, epochs). BYOL/SimSiam point at a script missing from the
# original repo; the most likely recipe is used (random, 400 epochs, RRC 0.25 + flip).
MSLS_FINAL = {
    "simclr": (1, 1024, "partial", 1000, 1, True, 200),
    "mocov2": (0, 1024, "random", 0, 0, False, 400),
    "byol": (2, 4096, "random", 0, 0, True, 400),
    "simsiam": (2, 4096, "random", 0, 0, True, 400),
    "bt": (2, 2048, "partial", 1000, 1, True, 200),
    "vicreg": (2, 4096, "partial", 1000, 1, True, 200),
}
# The DeiT-S scripts (`*_deit`): the same layout; no augmentation, 1000 epochs for all
# (time-capped at 48 h in the original), 32 pairs per step, FC 256.
MSLS_FINAL_DEIT = {
    "simclr": (1, 1024, "partial", 1000, 1, False, 1000),
    "mocov2": (0, 256, "random", 0, 0, False, 1000),
    "byol": (2, 4096, "random", 0, 0, False, 1000),
    "simsiam": (2, 4096, "random", 0, 0, False, 1000),
    "bt": (2, 2048, "partial", 1000, 1, False, 1000),
    "vicreg": (2, 4096, "partial", 1000, 1, False, 1000),
}


def msls_final(method: str, backbone: str = "resnet50conv5") -> ml_collections.ConfigDict:
  """The original's final recipe for `method` on MSLS, with ResNet-50 or DeiT-S.

  Common to all: Adam lr 1e-5 (constant), 480x640, 10,000 queries per epoch,
  --pair_negative (negatives halve the item batch), --unfreeze (everything trains),
  validation every 10 epochs on the val split, best checkpoint by R@5. ResNet-50: GeM +
  FC 1024, 64 pairs per step. DeiT-S: its two heads of 256, 32 pairs per step.
  """
  deit = backbone == "deit"
  n_layers, proj, mode, neg, negq, aug, epochs = (MSLS_FINAL_DEIT if deit else MSLS_FINAL)[method]
  c = base_config()
  c.method = method
  c.data.name = "msls"
  c.model.backbone = backbone
  if deit:
    c.model.fc_output_dim, c.train.batch_size = 256, 32
  c.model.n_layers, c.model.projection_size = n_layers, proj
  c.train.epochs = epochs
  c.train.mining, c.train.neg_samples_num, c.train.negs_num_per_query = mode, neg, negq
  c.train.pair_negative = True
  c.train.random_resized_crop = 0.25 if aug else 0.0
  c.train.horizontal_flip = aug
  c.eval.split = "val"
  return c


def supervised(method: str, dataset: str, backbone: str) -> ml_collections.ConfigDict:
  """The original's train.py setting shared by the supervised recipes: the criterion,
  GeM + FC 1024 (ResNet-50) or DeiT-S with heads of 256, no projector, Adam lr 1e-5,
  480x640, no augmentation, validation after every epoch, selection on R@5, the early
  ResNet layers frozen (no --unfreeze)."""
  c = base_config()
  c.method = method
  c.data.name = dataset
  c.model.backbone = backbone
  c.model.fc_output_dim = 256 if backbone == "deit" else 1024
  c.model.n_layers = 0
  c.model.unfreeze = False
  c.train.random_resized_crop, c.train.horizontal_flip = 0.0, False
  c.train.val_every = 1
  return c


def finetune_pitts30k(backbone: str) -> ml_collections.ConfigDict:
  """Jobs (a) and (b) of the original's train.sh: a stage-1 model fine-tuned on Pitts30k
  with the triplet loss (full mining, 16 queries x 2 negatives per step, 5000 queries per
  epoch in refreshes of 1000, 500 epochs, patience 50). train.init_from names the stage-1
  run or checkpoint."""
  c = supervised("triplet", "pitts30k", backbone)
  t = c.train
  t.mining, t.neg_samples_num, t.negs_num_per_query = "full", 1000, 2
  t.lr, t.batch_size, t.infer_batch_size = 1e-5, 16, 64
  t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 500, 50, 5000, 1000
  c.eval.datasets, c.eval.split = "pitts30k", "test"
  return c


def triplet_msls(backbone: str) -> ml_collections.ConfigDict:
  """The supervised baseline rows of the paper's table: the benchmark's triplet training on
  MSLS. The original's scripts for these rows are not known; the values are train.py's
  parser defaults (partial mining, 4 queries x 10 negatives per step, 5000 queries per
  epoch in refreshes of 1000, a pool of 1000, 100 epochs, patience 100) with the paper's
  descriptor sizes."""
  c = supervised("triplet", "msls", backbone)
  t = c.train
  t.mining, t.neg_samples_num, t.negs_num_per_query = "partial", 1000, 10
  t.lr, t.batch_size = 1e-5, 4
  t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 100, 100, 5000, 1000
  c.eval.split = "val"
  return c


def stage2(job: str) -> ml_collections.ConfigDict:
  """train_reranker.py's jobs on DeiT-S (train.sh (c)-(e)): the re-ranking network (local
  tokens of 3 + 128, 500 per image, R2Former) on the supervised tuples, validated and
  selected on the re-ranked recall of the global top 100.

    c "rerank_msls": the stage-1 model frozen (fix 1), global mining from the precomputed
      hard negatives (first 100), AdamW 5e-4 with 5 warm-up epochs + cosine, 50 epochs,
      patience 25, 128 queries x 1 negative, 50,000 queries per epoch in refreshes of 10,000;
    d "finetune_msls": everything trains (fix 0, --unfreeze), partial mining, Adam 1e-5,
      100 epochs, patience 100, 64 queries x 2 negatives;
    e "finetune_pitts30k": as d on Pitts30k, full mining, AdamW 1e-5 with warm-up + cosine,
      50 epochs, patience 10, 16 x 1, 5000 queries per epoch in refreshes of 1000, selection
      on R@5 (save_best keeps its default 1 there).
  train.init_from names the run of the job before (stage 1 for c)."""
  c = supervised("r2former", "msls", "deit")
  c.model.local_dim, c.model.num_local = 128, 500
  c.eval.rerank_top = 100
  t = c.train
  t.infer_batch_size = 256
  t.margin = 0.1
  if job == "rerank_msls":
    c.rerank.fix = 1
    t.mining, c.rerank.neg_hardness, t.negs_num_per_query = "global", 100, 1
    t.lr, t.optimizer, t.cosine_scheduler, t.warmup_epochs = 5e-4, "adamw", True, 5
    t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 50, 25, 50000, 10000
    t.batch_size, t.save_best, c.eval.rerank_batch_size = 128, 0, 8
    c.eval.split = "val"
  elif job == "finetune_msls":
    c.rerank.fix, c.model.unfreeze = 0, True
    t.mining, t.neg_samples_num, t.negs_num_per_query = "partial", 1000, 2
    t.lr, t.optimizer = 1e-5, "adam"
    t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 100, 100, 50000, 10000
    t.batch_size, t.save_best, c.eval.rerank_batch_size = 64, 0, 16
    c.eval.split = "val"
  elif job == "finetune_pitts30k":
    c.data.name = "pitts30k"
    c.rerank.fix, c.model.unfreeze = 0, True
    t.mining, t.neg_samples_num, t.negs_num_per_query = "full", 1000, 1
    t.lr, t.optimizer, t.cosine_scheduler, t.warmup_epochs = 1e-5, "adamw", True, 5
    t.epochs, t.patience, t.queries_per_epoch, t.cache_refresh_rate = 50, 10, 5000, 1000
    t.batch_size, t.save_best, c.eval.rerank_batch_size = 16, 1, 4
    c.eval.datasets, c.eval.split = "pitts30k", "test"
  else:
    raise ValueError(f"unknown stage-2 job {job!r}")
  return c


# Today's published models: (backbone, aggregation, evaluation size, blocks trained, final
# norm, the aggregation's settings). The evaluation sizes are the authors' (the field's recall
# tables use them); docs/vpr_models.md.
PUBLISHED = {
    "salad_dinov2": ("dinov2_vitb14", "salad", (322, 322), 4, True, {}),
    "megaloc": ("dinov2_vitb14", "salad", (322, 322), 4, True,
                {"cluster_dim": 256, "token_dim": 256, "out_dim": 8448}),
    "boq_dinov2": ("dinov2_vitb14", "boq", (322, 322), 2, False,
                   {"proj_channels": 384, "num_queries": 64, "num_layers": 2, "row_dim": 32}),
    "boq_resnet50": ("resnet50conv4", "boq", (384, 384), 0, True,
                     {"proj_channels": 512, "num_queries": 64, "num_layers": 2, "row_dim": 32}),
    "mixvpr_resnet50": ("resnet50conv4", "mixvpr", (320, 320), 0, True,
                        {"out_channels": 1024, "mix_depth": 4, "mlp_ratio": 1.0,
                         "out_rows": 4}),
}


def published(model: str) -> ml_collections.ConfigDict:
  """The network of a published model (SALAD, MegaLoc, BoQ with DINOv2 or ResNet-50,
  MixVPR) at its authors' evaluation size, for scoring its release with
  `vgssl_jax.evaluate --checkpoint <file>`. No FC and no projector: the aggregation's output
  is the descriptor. Training from it fine-tunes with the triplet loss on MSLS (partial
  mining, 4 queries x 10 negatives, Adam 1e-5), DINOv2 with only its last blocks learning
  as the authors train; the GSV-Cities recipes with the multi-similarity loss are their
  own configs."""
  backbone, aggregation, size, train_blocks, final_norm, settings = PUBLISHED[model]
  c = supervised("triplet", "msls", backbone)
  c.model.aggregation, c.model.fc_output_dim = aggregation, 0
  c.model.train_blocks, c.model.dinov2.final_norm = train_blocks, final_norm
  c.model[aggregation].update(settings)
  c.data.image_size = size
  t = c.train
  t.mining, t.neg_samples_num, t.negs_num_per_query = "partial", 1000, 10
  t.lr, t.batch_size, t.infer_batch_size = 1e-5, 4, 32
  c.eval.split = "val"
  return c


def _gsv(model: str) -> ml_collections.ConfigDict:
  """The network of `model` (PUBLISHED) trained with the multi-similarity loss on
  GSV-Cities, P x 4 images per step (data.gsv), bfloat16 as the authors' 16-bit mixed
  precision, validation after every epoch on data.name's val split, selection on R@1."""
  c = published(model)
  c.method = "ms"
  c.model.dtype = "bfloat16"
  c.data.gsv.img_per_place, c.data.gsv.min_img_per_place = 4, 4
  c.eval.image_size = c.data.image_size  # the authors' evaluation size
  c.data.eval_resize = "pil"  # their evaluation transform: T.Resize on the PIL image
  t = c.train
  t.val_every, t.save_best, t.patience = 1, 0, 0
  return c


def gsv(recipe: str) -> ml_collections.ConfigDict:
  """The authors' GSV-Cities training (docs/vpr_training.md has what each official
  repository sets and where this deviates):

    salad_gsv       SALAD main.py: DINOv2-B/14, last 4 blocks, 60 places x 4 at 224x224,
                    bilinear resize + RandAugment(3 ops, magnitude 9), AdamW 6e-5 (decay
                    9.5e-9), LinearLR 1 -> 0.2 over 4000 steps, 4 epochs; Pitts30k val R@1
                    at 322x322
    boq_dinov2_gsv  BoQ train.py: DINOv2-B/14 without its final norm, last 2 blocks, BoQ 512
                    x 64 queries x 2 layers -> 8192, 128 places x 4 at 224x224, bicubic resize
                    + RandAugment(3, 15), AdamW 1e-4 (decay 1e-4), 10 warm-up epochs (per
                    step), x0.1 at epochs 10 and 20, 40 epochs; MSLS val R@1 at 322x322
    mixvpr_gsv      MixVPR main.py: ResNet-50 cut after layer3 (conv1..layer2 frozen), MixVPR
                    1024 x 4 rows, 120 places x 4 at 320x320, RandAugment(3, 9), SGD 0.05
                    (momentum 0.9, decay 1e-3), 650 warm-up steps, x0.3 at epochs 5, 10, 15,
                    25, 45, 80 epochs; Pitts30k val R@1 at 320x320
  """
  if recipe == "salad_gsv":
    c = _gsv("salad_dinov2")
    c.data.name = "pitts30k"
    c.data.image_size = (224, 224)
    t = c.train
    t.batch_size, t.epochs = 60, 4
    t.optimizer, t.lr, t.weight_decay = "adamw", 6e-5, 9.5e-9
    t.lr_schedule, t.lr_end_factor, t.lr_decay_steps = "linear", 0.2, 4000
  elif recipe == "boq_dinov2_gsv":
    c = _gsv("boq_dinov2")
    c.model.boq.update({"proj_channels": 512, "num_queries": 64, "num_layers": 2,
                        "row_dim": 16})
    c.data.name = "msls"
    c.data.image_size = (224, 224)
    c.data.gsv.interpolation, c.data.gsv.randaugment_magnitude = "bicubic", 15
    t = c.train
    t.batch_size, t.epochs = 128, 40
    t.optimizer, t.lr, t.weight_decay = "adamw", 1e-4, 1e-4
    t.lr_schedule, t.warmup_epochs, t.schedule, t.lr_gamma = "step", 10, (10, 20), 0.1
  elif recipe == "mixvpr_gsv":
    c = _gsv("mixvpr_resnet50")
    c.model.unfreeze = False  # layers_to_freeze=2
    c.data.name = "pitts30k"
    t = c.train
    t.batch_size, t.epochs = 120, 80
    t.optimizer, t.lr, t.weight_decay = "sgd", 0.05, 1e-3
    t.lr_schedule, t.warmup_steps, t.schedule, t.lr_gamma = "step", 650, (5, 10, 15, 25, 45), 0.3
  else:
    raise ValueError(f"unknown GSV recipe {recipe!r}; expected salad_gsv, boq_dinov2_gsv or "
                     "mixvpr_gsv")
  c.eval.split = "val"  # the val split selects; test with eval.datasets / eval.split
  return c


def vicreg_msls_dinov2_salad() -> ml_collections.ConfigDict:
  """VG-SSL's question on a 2026 model: the paper's final VICReg recipe on MSLS (GeoPairs,
  partial mining of 1000, the pair negative, projector 2 x 4096, Adam 1e-5) with DINOv2-B/14
  + SALAD (8448-d, no FC), its last 4 blocks learning as SALAD trains it, at 322x322 (the
  field's DINOv2 size; 480x640 is not a multiple of its 14-pixel patches)."""
  c = msls_final("vicreg", "dinov2_vitb14")
  c.model.aggregation, c.model.fc_output_dim = "salad", 0
  c.model.train_blocks, c.model.dinov2.final_norm = 4, True
  c.data.image_size = (322, 322)
  c.train.infer_batch_size = 32
  return c


RECIPES = {"msls_final": msls_final, "supervised": supervised,
           "finetune_pitts30k": finetune_pitts30k, "triplet_msls": triplet_msls,
           "stage2": stage2, "published": published, "gsv": gsv,
           "vicreg_msls_dinov2_salad": vicreg_msls_dinov2_salad}


def get_config(arg: str = "msls_final,vicreg") -> ml_collections.ConfigDict:
  """`arg` = "<recipe>,<argument>,...", e.g. "msls_final,simclr,deit" or "stage2,rerank_msls"."""
  name, *args = [a.strip() for a in arg.split(",")]
  if name not in RECIPES:
    raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
  return RECIPES[name](*args)
