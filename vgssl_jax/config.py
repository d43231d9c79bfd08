"""The configuration schema: every key with its default, and checks that run before any
compilation. Experiment files in configs/ start from `base_config()` and change values.
"""

from __future__ import annotations

import json
import logging
import os

import ml_collections
import numpy as np

from data_pipelines import datasets, images, mining, query_views, synthetic
from data_pipelines.places import EVAL_RADIUS_M, TRAIN_POSITIVE_RADIUS_M
from vgssl_jax.errors import ConfigError
from vgssl_jax.evaluation import search
from vgssl_jax.evaluation.metrics import RECALL_VALUES
from vgssl_jax.models import heads, registry
from vgssl_jax.models.aggregation import AGGREGATIONS, L2_MODES
from vgssl_jax.models.aggregation import KEYS as AGGREGATION_KEYS
from vgssl_jax.models.network import DTYPES
from vgssl_jax.objectives import losses
from vgssl_jax.objectives import registry as objectives
from vgssl_jax.training.optimizer import LR_SCHEDULES, OPTIMIZERS, schedule_for


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "vicreg"            # vicreg | bt | simclr | mocov2 | byol | simsiam (SSL on
                                 # GeoPairs) | triplet | sare_ind | sare_joint (supervised)
  c.seed = 0
  c.num_devices = 0              # devices of the ("data",) mesh; 0 = all visible

  # Multi-host: jax.distributed.initialize() is called from SLURM's variables when a job has
  # several tasks, or from these settings when coordinator_address is set.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""   # host:port of process 0
  c.distributed.num_processes = 1
  c.distributed.process_id = 0

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet50conv5"   # resnet{18,50,101}conv{4,5} | deit (DeiT-S distilled)
  c.model.width = 64                   # ResNets: torchvision's 64; narrow ones for tests/demo
  c.model.fc_output_dim = 1024         # descriptor size D_g (DeiT: its two heads' size); 0: no
                                       # FC, the pooled vector is the descriptor
  c.model.aggregation = "gem"          # gem | spoc | mac | rmac | netvlad (ResNets; DeiT has none)
  c.model.l2 = "before_pool"           # before_pool | after_pool | none (not for netvlad)
  c.model.netvlad_clusters = 64        # NetVLAD's K, initialised by k-means (see training.run)
  c.model.unfreeze = True              # False: ResNet conv1, bn1, layer1, layer2 not trained
                                       # (their BN statistics still update), as train.py
  c.model.n_layers = 2                 # projector depth (0..3); 0 = no projector
  c.model.projection_size = 4096       # projector width P
  c.model.dtype = "float32"            # compute dtype: float32 | bfloat16 (parameters,
                                       # optimizer, BN statistics, losses stay float32)
  c.model.pretrained = ""              # ImageNet weights of the backbone (.pth/.safetensors):
                                       # torchvision ResNets; timm's DeiT-S distilled
  # DeiT (model.backbone=deit): DeiT-S by default; smaller for tests and the demo
  # stage 2 (re-ranking): local tokens of (3 + local_dim) per image for the R2Former
  c.model.local_dim = 0                # 0: a global-only network; 128 in the original
  c.model.num_local = 500              # local tokens per image (clamped to the token grid)
  c.model.finetune = False             # True: re-ranking gradients reach the backbone
  c.model.vit = ml_collections.ConfigDict(
      {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0})

  c.data = ml_collections.ConfigDict()
  c.data.root = "datasets"             # holds <name>/images/<split>/{database,queries}
  c.data.name = "msls"
  c.data.image_size = (480, 640)       # (H, W) hard resize, as the original
  c.data.num_workers = 0               # grain worker processes (0: threads in this process)
  c.data.num_threads = 4               # decoding threads per process
  # evaluation, database and mining-cache images: "tensor" = the original's evaluation
  # pipeline (bilinear without antialiasing on the normalised pixels); "pil" = the PIL
  # resize of the training images for every image. Training batches always use PIL.
  c.data.eval_resize = "tensor"        # tensor | pil
  c.data.jpeg_draft = False            # decode JPEGs >= 2x the input size at 1/2..1/8 scale
                                       # (libjpeg DCT scaling) before the resize: faster,
                                       # other pixels than the original's
  c.data.source = "files"              # files | array_record (prepared with data_pipelines.tfds)
  c.data.records_dir = "tfds_data"     # where the ArrayRecord datasets were prepared
  c.data.synthetic = ml_collections.ConfigDict(
      {k: v for k, v in synthetic.SyntheticConfig().__dict__.items()})

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 200
  c.train.batch_size = 64              # pairs per optimizer step (train_batch_size); the
                                       # supervised path: query tuples per step
  c.train.lr = 1e-5                    # Adam, constant
  c.train.optimizer = "adam"           # adam | adamw (decay 0.03) | sgd (momentum 0.9, 1e-3)
  c.train.weight_decay = -1.0          # < 0: the original's decay of the optimizer (above)
  c.train.queries_per_epoch = 10000
  # GeoPair mining (docs/original.md §GeoPair mining). The mining cache embeds images in eval
  # mode and uses the projector output when model.n_layers > 0 (as the original), else the
  # descriptor.
  c.train.mining = "random"            # random | partial | full (| msls_weighted: supervised)
  c.train.neg_samples_num = 0          # partial: pool size; random/full: > 0 = use negatives
  c.train.negs_num_per_query = 1       # M negatives mined per query (SSL: a batch keeps one)
  c.train.pair_negative = False        # attach the negative to its pair (halves the item batch)
  c.train.positive_radius = TRAIN_POSITIVE_RADIUS_M  # training positives (metres)
  c.train.negative_radius = EVAL_RADIUS_M            # soft positives: never used as negatives
  c.train.random_resized_crop = 0.25   # r of RRC on the query view, scale (1 - r, 1); 0 = off
  c.train.horizontal_flip = True       # whole-batch flip with p = 0.5
  c.train.infer_batch_size = 256       # batch of the mining and evaluation forwards
  # the supervised path (method triplet | sare_ind | sare_joint; train.py of the original)
  c.train.margin = 0.1                 # triplet margin
  c.train.cache_refresh_rate = 1000    # queries per mining round; an epoch has
                                       # ceil(queries_per_epoch / cache_refresh_rate) rounds
  c.train.init_from = ""               # fine-tuning: a run's workdir/checkpoint or a VG-SSL
                                       # checkpoint file; its backbone + aggregation start it
  c.train.val_every = 10               # validation every N epochs (0 = never)
  c.train.patience = 0                 # stop after N validations without a better R@5 (0 = off)
  # "" = the original's rule (written into the run's config.json as resolved): warm-up +
  # cosine with cosine_scheduler, else step for adamw and constant for adam and sgd
  c.train.lr_schedule = ""             # "" | constant | cosine (with warm-up) | step
  c.train.cosine_scheduler = False     # the original's --cosine_scheduler
  c.train.warmup_epochs = 0            # cosine: linear warm-up from lr / 10
  c.train.schedule = (60, 80)          # step: epochs where the learning rate drops x0.1
  c.train.save_best = 1                # model selection on recall@recall_values[save_best]
                                       # (1: R@5, as the original's stage 1 and train.py)
  c.train.grad_accum_steps = 1         # > 1: the global batch in micro-batches (see train.py)
  c.train.keep_checkpoints = 2         # the last N checkpoints are kept, and the best by val R@5
  c.train.checkpoint_every = 0         # also checkpoint every N steps within an epoch (0: epoch
                                       # ends only); a run always resumes from its last one
  c.train.log_every = 50               # steps between metric lines (loss, lr, images/s, ...)

  c.loss = ml_collections.ConfigDict()
  c.loss.sim_coeff = 25.0              # VICReg
  c.loss.std_coeff = 25.0
  c.loss.cov_coeff = 1.0
  c.loss.lambd = 0.0051                # Barlow Twins
  c.loss.temperature = 0.07            # SimCLR and MoCo (hard-coded in the original)
  c.loss.momentum = 0.99               # BYOL target EMA
  c.loss.moco_momentum = 0.999         # MoCo key encoder EMA
  c.loss.queue_size = 65536            # MoCo queue length (a multiple of train.batch_size)

  # stage 2 (method r2former, train_reranker.py)
  c.rerank = ml_collections.ConfigDict()
  c.rerank.loss = "ce"                 # ce | triplet | infoNCE | combine (losses.rerank_loss)
  c.rerank.fix = 1                     # 1: only local head + R2Former train (global net eval)
  c.rerank.neg_hardness = 10           # mining global: negatives from each query's first N
  c.rerank.hard_negatives = ""         # precomputed list (.npz); "" = compute in the run folder
  c.rerank.random_global = False       # True: train re-ranking on a random (untrained) global
                                       # network; the original always starts from a stage-1
                                       # model (train.init_from)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.datasets = ""                 # comma-separated names; "" = data.name
  c.eval.positive_radius = EVAL_RADIUS_M
  c.eval.recall_values = RECALL_VALUES
  c.eval.backend = "device"            # device | faiss
  c.eval.before = False                # also evaluate the untrained model (the demo does)
  c.eval.check_counts = True           # stop when a known benchmark split has unofficial counts
  c.eval.test_method = "hard_resize"   # hard_resize | single_query | central_crop | five_crops
                                       # | nearest_crop | maj_voting (queries only)
  c.eval.majority_weight = 0.01        # maj_voting
  c.eval.pca_dim = 0                   # > 0: PCA of the descriptors to this size
  c.eval.pca_dataset = ""              # dataset whose database fits the PCA ("" = data.name)
  c.eval.pca_split = "train"
  c.eval.pca_images = 16384            # at most this many database images (as the original)
  c.eval.num_preds_to_save = 0         # > 0: per query, a picture of its top-K predictions
  c.eval.save_only_wrong_preds = False # only for queries whose first prediction is wrong
  c.eval.rerank_top = 0                # > 0: R2Former re-ranks the global top-N (100)
  c.eval.rerank_batch_size = 4         # queries whose rerank_top pairs are scored at once
  # a stage-1 run trained first into <workdir>/init_run and used as train.init_from (the
  # stage-2 demo); empty: none
  c.init_run = ml_collections.ConfigDict()
  return c


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


def model_config_from(settings: dict) -> ml_collections.ConfigDict:
  """A `model` section from a checkpoint's recorded settings; keys added since it was
  written take their defaults."""
  mc = base_config().model
  with mc.unlocked():
    for key, value in settings.items():
      if isinstance(value, dict) and key in mc:
        mc[key].update(value)
      else:
        mc[key] = value
  return mc


def _one_of(value, allowed, key):
  if value not in allowed:
    raise ConfigError(f"{key}={value!r} is not valid; expected one of {', '.join(map(str, allowed))}"
                      f" (set it with --config.{key}=...).")


def items_per_step(config) -> int:
  """Dataset items per step: with attached negatives each item gives two pairs, so the
  original halves the item batch and a step keeps train.batch_size pairs (SSL); the
  supervised path's items are train.batch_size query tuples."""
  tc = config.train
  supervised = objectives.entry(config.method).epoch_source != "geopairs"
  halve = tc.pair_negative and tc.neg_samples_num > 0 and not supervised
  return tc.batch_size // 2 if halve else tc.batch_size


def validate(c: ml_collections.ConfigDict, purpose: str = "train") -> None:
  """Raises ConfigError naming the setting and the fix; runs before anything is compiled.
  `purpose`: "train" (vgssl_jax.main) or "evaluate" (the settings of training alone, such as
  what stage 2 selects models by, are not checked)."""
  _one_of(c.method, tuple(objectives.OBJECTIVES), "method")
  if c.model.n_layers < 0 or c.model.n_layers > 3:
    raise ConfigError(f"model.n_layers={c.model.n_layers} must be in 0..3 (0 = no projector).")
  try:
    registry.family(c.model.backbone)
    family = objectives.entry(c.method).projector_family
    if family:
      heads.projector_layout(family, c.model.n_layers)
  except ValueError as e:
    raise ConfigError(f"{e} (model.backbone / model.n_layers)") from None
  _one_of(c.model.dtype, tuple(DTYPES), "model.dtype")
  supervised = objectives.entry(c.method).epoch_source != "geopairs"
  _one_of(c.train.mining, mining.TRIPLET_MINING_MODES if supervised else mining.MINING_MODES,
          "train.mining")
  _one_of(c.eval.backend, search.BACKENDS, "eval.backend")
  _one_of(c.eval.test_method, query_views.METHODS, "eval.test_method")
  _one_of(c.data.source, datasets.SOURCES, "data.source")
  _one_of(c.data.eval_resize, images.RESIZES, "data.eval_resize")
  for key in ("pca_dim", "num_preds_to_save", "pca_images"):
    if c.eval[key] < 0:
      raise ConfigError(f"eval.{key}={c.eval[key]} must be >= 0.")
  recall_values = tuple(c.eval.recall_values)
  if not recall_values or any(not isinstance(n, int) or n < 1 for n in recall_values):
    raise ConfigError(f"eval.recall_values={recall_values} must be ranks N >= 1 (recall@N), e.g. "
                      "--config.eval.recall_values=1,5,10,20.")
  if c.eval.pca_dim > c.model.fc_output_dim:
    raise ConfigError(f"eval.pca_dim={c.eval.pca_dim} exceeds the descriptor size "
                      f"model.fc_output_dim={c.model.fc_output_dim}: PCA can only reduce it.")
  if c.eval.pca_dim and c.eval.pca_dim > c.eval.pca_images:
    raise ConfigError(f"eval.pca_dim={c.eval.pca_dim} exceeds eval.pca_images={c.eval.pca_images}"
                      ": PCA needs at least as many images as dimensions.")
  _one_of(c.model.aggregation, AGGREGATIONS, "model.aggregation")
  _one_of(c.model.l2, L2_MODES, "model.l2")
  if c.model.netvlad_clusters < 1:
    raise ConfigError(f"model.netvlad_clusters={c.model.netvlad_clusters} must be >= 1.")
  if c.model.fc_output_dim < 0 or (c.model.fc_output_dim == 0 and c.model.backbone == "deit"):
    raise ConfigError(f"model.fc_output_dim={c.model.fc_output_dim} must be >= 0 (0: no FC), "
                      "and > 0 for DeiT (its heads' size).")
  for key in ("model.width", "model.projection_size", "train.epochs",
              "train.batch_size", "train.queries_per_epoch", "train.infer_batch_size"):
    section, name = key.split(".")
    if int(c[section][name]) <= 0:
      raise ConfigError(f"{key}={c[section][name]} must be a positive integer.")
  size = tuple(c.data.image_size)
  if len(size) != 2 or not all(isinstance(v, int) for v in size) or min(size) < 32:
    written = "x".join(map(str, size)).replace("'", "")
    raise ConfigError(f"data.image_size={written} must be (height, width) in pixels, each >= 32, "
                      "written with a comma: --config.data.image_size=480,640.")
  if not 0.0 <= c.train.random_resized_crop < 1.0:
    raise ConfigError(f"train.random_resized_crop={c.train.random_resized_crop} must be in "
                      "[0, 1): the crop keeps a (1 - r, 1) fraction of the area.")
  if c.train.queries_per_epoch < c.train.batch_size:
    raise ConfigError(f"train.queries_per_epoch={c.train.queries_per_epoch} is smaller than "
                      f"train.batch_size={c.train.batch_size}: an epoch would have no step.")
  for key in ("train.positive_radius", "train.negative_radius", "eval.positive_radius",
              "train.lr"):
    section, name = key.split(".")
    if not c[section][name] > 0:
      raise ConfigError(f"{key}={c[section][name]} must be > 0.")
  if c.train.positive_radius > c.train.negative_radius:
    raise ConfigError("train.positive_radius must not exceed train.negative_radius.")
  try:
    registry.check(c.model, size)
  except ValueError as e:
    raise ConfigError(f"{e}.") from None
  if supervised:
    _check_triplets(c)
  else:
    _check_negatives(c)
  _one_of(c.train.lr_schedule, ("",) + LR_SCHEDULES, "train.lr_schedule")
  if c.train.cosine_scheduler and c.train.lr_schedule not in ("", "cosine"):
    raise ConfigError(f"train.cosine_scheduler=True asks for warm-up + cosine but train.lr_schedule="
                      f"{c.train.lr_schedule!r} names another schedule: drop one of the two.")
  _one_of(c.train.optimizer, OPTIMIZERS, "train.optimizer")
  if not 0 <= c.train.save_best < len(recall_values):
    raise ConfigError(f"train.save_best={c.train.save_best} must index eval.recall_values="
                      f"{recall_values} (0..{len(recall_values) - 1}).")
  for key in ("patience", "warmup_epochs", "checkpoint_every"):
    if c.train[key] < 0:
      raise ConfigError(f"train.{key}={c.train[key]} must be >= 0.")
  if c.train.keep_checkpoints < 1 or c.train.log_every < 1 or c.train.grad_accum_steps < 1:
    raise ConfigError("train.keep_checkpoints, train.log_every and train.grad_accum_steps must be "
                      ">= 1.")
  items, accum = items_per_step(c), c.train.grad_accum_steps
  if items % accum:
    raise ConfigError(f"train.grad_accum_steps={accum} must divide the {items} items of a step "
                      "(train.batch_size, halved with train.pair_negative and negatives).")
  _check_stage2(c, purpose)
  if c.model.pretrained and not os.path.isfile(c.model.pretrained):
    fam, _ = registry.family(c.model.backbone)
    raise ConfigError(f"model.pretrained={c.model.pretrained!r} is not a file: give the path of "
                      f"{fam.weights} (.pth or .safetensors); nothing is downloaded.")


# settings read only under a condition on other settings: (keys, used?, why not)
CONDITIONAL_KEYS = (
    (("train.warmup_epochs",), lambda c: c.train.lr_schedule == "cosine",
     "only the cosine schedule warms up"),
    (("train.schedule",), lambda c: c.train.lr_schedule == "step",
     "the epochs of the step schedule"),
    (("eval.majority_weight",), lambda c: c.eval.test_method == "maj_voting",
     "read by eval.test_method=maj_voting only"),
    (("eval.pca_dataset", "eval.pca_split", "eval.pca_images"), lambda c: c.eval.pca_dim > 0,
     "PCA settings, with eval.pca_dim=0"),
    (("eval.rerank_batch_size",), lambda c: c.eval.rerank_top > 0,
     "re-ranking settings, with eval.rerank_top=0"),
)
# what an evaluation never reads
TRAINING_ONLY = ("train.", "loss.", "rerank.", "init_run.")


def _matches(key: str, patterns) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def ignored_overrides(c: ml_collections.ConfigDict, keys: list[str],
                      purpose: str = "train") -> dict[str, str]:
  """{key: why} of the given settings (those set on the command line) that this config's
  method, backbone, aggregation or other settings do not read. Run after `resolve`."""
  entry = objectives.entry(c.method)
  fam, _ = registry.family(c.model.backbone)
  # (kind, name, keys only it reads) of every component, and this run's component per kind
  owners = [("method", m, e.keys) for m, e in objectives.OBJECTIVES.items()]
  owners += [("training", t, k) for t, k in objectives.EPOCH_SOURCE_KEYS.items()]
  owners += [("backbone family", f.name, f.keys) for f in registry.FAMILIES]
  owners += [("aggregation", a, k) for a, k in AGGREGATION_KEYS.items()]
  active = {"method": c.method, "training": entry.epoch_source, "backbone family": fam.name,
            "aggregation": c.model.aggregation if "model.aggregation" in fam.keys else "none"}
  out = {}
  for key in keys:
    if purpose == "evaluate" and _matches(key, TRAINING_ONLY) and key != "train.infer_batch_size":
      out[key] = "an evaluation does not train"
      continue
    users = [(kind, name) for kind, name, owned in owners if _matches(key, owned)]
    if users and not any(active[kind] == name for kind, name in users):
      kind = users[0][0]
      names = " | ".join(name for k, name in users if k == kind)
      out[key] = f"read only with {kind} {names}; this run's is {active[kind]}"
      continue
    for patterns, used, why in CONDITIONAL_KEYS:
      if _matches(key, patterns) and not used(c):
        out[key] = why
  return out


def _check_stage2(c: ml_collections.ConfigDict, purpose: str = "train") -> None:
  """The re-ranking settings: local tokens the backbone can give, a reranker to use."""
  mc, ec = c.model, c.eval
  if mc.local_dim:
    try:
      registry.check_local(mc, tuple(c.data.image_size))
    except ValueError as e:
      raise ConfigError(f"{e}.") from None
  if c.method == "r2former" and not mc.local_dim:
    raise ConfigError("method=r2former trains the re-ranking network, which needs local tokens: "
                      "set --config.model.local_dim=128 (the original's) on a deit or conv5 "
                      "ResNet backbone.")
  if c.method == "r2former" and not ec.rerank_top and purpose == "train":
    raise ConfigError("method=r2former validates and selects models on the re-ranked recall: set "
                      "--config.eval.rerank_top=100 (the original's; at most the val database).")
  if (c.method == "r2former" and purpose == "train" and not c.train.init_from
      and not c.init_run and not c.rerank.random_global):
    raise ConfigError("method=r2former re-ranks the global top list of a trained stage-1 model: "
                      "set --config.train.init_from=<its run folder or checkpoint> (the original "
                      "always starts from one), or --config.rerank.random_global=True to train on "
                      "an untrained global network on purpose.")
  if ec.rerank_top < 0 or ec.rerank_batch_size < 1:
    raise ConfigError(f"eval.rerank_top={ec.rerank_top} must be >= 0 and "
                      f"eval.rerank_batch_size={ec.rerank_batch_size} >= 1.")
  if ec.rerank_top and not mc.local_dim:
    raise ConfigError(f"eval.rerank_top={ec.rerank_top}: re-ranking needs a network with local "
                      "tokens and an R2Former (a stage-2 run, model.local_dim > 0); set "
                      "eval.rerank_top=0 for global retrieval only.")
  _one_of(c.rerank.loss, losses.RERANK_LOSSES, "rerank.loss")
  _one_of(c.rerank.fix, (0, 1), "rerank.fix")
  if c.train.mining.startswith("global"):
    if c.rerank.neg_hardness < c.train.negs_num_per_query:
      raise ConfigError(f"rerank.neg_hardness={c.rerank.neg_hardness} is smaller than "
                        f"train.negs_num_per_query={c.train.negs_num_per_query}: global mining "
                        "samples the negatives from each query's first neg_hardness.")
    if c.rerank.neg_hardness > mining.HARD_NEGATIVES_KEPT:
      raise ConfigError(f"rerank.neg_hardness={c.rerank.neg_hardness} exceeds the "
                        f"{mining.HARD_NEGATIVES_KEPT} hard negatives kept per query.")
  if c.rerank.hard_negatives and not os.path.isfile(c.rerank.hard_negatives):
    raise ConfigError(f"rerank.hard_negatives={c.rerank.hard_negatives!r} is not a file; give a "
                      "list precomputed by an earlier run (hard_negatives.npz in its folder) or "
                      "leave it empty to compute it.")
  n_tokens = int(np.prod(registry.token_grid(mc, tuple(c.data.image_size))))
  if mc.local_dim and mc.num_local > n_tokens:
    logging.warning("model.num_local=%d exceeds the %d tokens of a %dx%d image: %d local tokens "
                    "per image are used (the original clamps too)", mc.num_local, n_tokens,
                    *c.data.image_size, n_tokens)
  if c.init_run:
    validate(c.init_run, purpose)


def _check_triplets(c: ml_collections.ConfigDict) -> None:
  t = c.train
  if t.negs_num_per_query < 1:
    raise ConfigError(f"train.negs_num_per_query={t.negs_num_per_query}: the supervised "
                      "objectives need at least one negative per query.")
  if t.mining not in ("random", "global") and t.negs_num_per_query > t.neg_samples_num:
    raise ConfigError(f"train.negs_num_per_query={t.negs_num_per_query} is larger than the "
                      f"candidate pool train.neg_samples_num={t.neg_samples_num} of "
                      f"train.mining={t.mining}.")
  if t.cache_refresh_rate < t.batch_size:
    raise ConfigError(f"train.cache_refresh_rate={t.cache_refresh_rate} is smaller than "
                      f"train.batch_size={t.batch_size}: a refresh would have no step.")
  if t.margin <= 0:
    raise ConfigError(f"train.margin={t.margin} must be > 0.")


def _check_negatives(c: ml_collections.ConfigDict) -> None:
  t = c.train
  if t.neg_samples_num < 0 or t.negs_num_per_query < 0:
    raise ConfigError("train.neg_samples_num and train.negs_num_per_query must be >= 0.")
  if t.neg_samples_num > 0 and t.negs_num_per_query < 1 and (t.pair_negative or t.mining != "random"):
    raise ConfigError("train.negs_num_per_query must be >= 1 when negatives are mined "
                      "(train.neg_samples_num > 0).")
  if t.pair_negative and t.neg_samples_num > 0 and t.batch_size % 2:
    raise ConfigError(f"train.batch_size={t.batch_size} must be even with train.pair_negative: "
                      "each item carries a query pair and a negative pair, so a step holds "
                      "batch_size / 2 items.")
  if t.mining == "partial" and t.neg_samples_num > 0 and t.negs_num_per_query > t.neg_samples_num:
    raise ConfigError(f"train.negs_num_per_query={t.negs_num_per_query} is larger than the "
                      f"partial-mining pool train.neg_samples_num={t.neg_samples_num}.")
  if c.method == "mocov2" and c.loss.queue_size % t.batch_size:
    raise ConfigError(f"loss.queue_size={c.loss.queue_size} is not a multiple of the global "
                      f"batch train.batch_size={t.batch_size}: the MoCo queue advances by whole "
                      "batches. Use e.g. a power of two for both.")


# Settings a resumed run may change (logged); any other change is refused, because the
# checkpoint would continue a different experiment.
SAFE_TO_CHANGE = ("train.epochs", "train.val_every", "train.patience", "train.keep_checkpoints",
                  "train.checkpoint_every", "train.log_every", "train.infer_batch_size",
                  "data.root", "data.num_workers", "data.num_threads", "data.source",
                  "data.records_dir", "eval.", "num_devices", "distributed.", "model.pretrained",
                  "train.init_from")
SHAPE_KEYS = ("model.", "loss.queue_size", "data.image_size")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Settings whose default depends on others, made explicit (so config.json records what
  the run uses): the learning-rate schedule of the optimizer."""
  t = c.train
  t.lr_schedule = schedule_for(t.optimizer, t.lr_schedule, t.cosine_scheduler)
  if c.get("init_run"):
    resolve(c.init_run)
  return c


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Keys whose value differs between a run's saved config and `config` (JSON-normalised).
  Keys added to the schema since the run was saved count as unchanged while they keep their
  default; keys since removed are not compared.

  Returns the safe changes; raises ConfigError naming the others (model-shape changes first)."""
  old, new = _flat(saved), _flat(json.loads(config.to_json_best_effort()))
  defaults = _flat(json.loads(base_config().to_json_best_effort()))
  changed = sorted(k for k in new if old.get(k, defaults.get(k)) != new[k])
  unsafe = [k for k in changed if not k.startswith(SAFE_TO_CHANGE)]
  shape = [k for k in unsafe if k.startswith(SHAPE_KEYS)]
  if unsafe:
    def listed(keys):
      return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    experiment = [k for k in unsafe if k not in shape]
    what = []
    if experiment:
      what.append(f"changes the experiment ({listed(experiment)})")
    if shape:
      what.append(f"changes the model shape ({listed(shape)})")
    raise ConfigError(f"this config {' and '.join(what)} of the run being resumed. Use another "
                      "--workdir for a new run, or the run's own config to resume it.")
  return changed


def eval_datasets(c: ml_collections.ConfigDict) -> list[str]:
  names = [n.strip() for n in str(c.eval.datasets).split(",") if n.strip()]
  return names or [c.data.name]
