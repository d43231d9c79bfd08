"""The configuration schema: every key with its default and meaning, nothing else.

Experiment files in configs/ start from `base_config()` and change values; the command
line overrides any key (`--config.train.lr=...`). What the values may be is checked by the
components that read them, all from one place before any work (vgssl_jax.checks). This
module imports nothing of the package: every other module may read it.
"""

from __future__ import annotations

import ml_collections

from data_pipelines import synthetic, synthetic_gsv
from data_pipelines.places import EVAL_RADIUS_M, TRAIN_POSITIVE_RADIUS_M

# the ranks N of recall@N reported, as the original's --recall_values
RECALL_VALUES = (1, 5, 10, 20)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "vicreg"            # the training objective: vicreg | bt | simclr | mocov2 |
                                 # byol | simsiam (SSL on GeoPairs) | triplet | sare_ind |
                                 # sare_joint (supervised) | r2former (stage 2)
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
                                       # (models/backbones.py)
  c.model.width = 64                   # ResNets: torchvision's 64; narrow ones for tests/demo
  c.model.fc_output_dim = 1024         # descriptor size D_g (DeiT: its two heads' size); 0: no
                                       # FC, the pooled vector is the descriptor
  c.model.aggregation = ""             # "" = the backbone's default (ResNets: gem; deit: its
                                       # dist_heads) | gem | spoc | mac | rmac | netvlad
                                       # (models/aggregations.py; resolved into config.json)
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
  # DINOv2 (model.backbone=dinov2_vit{s,b,l,g}14[_reg]): the named size unless these are > 0
  # (tiny models for tests and demos); img_size makes the position grid (518: DINOv2's)
  c.model.dinov2 = ml_collections.ConfigDict(
      {"embed_dim": 0, "depth": 0, "num_heads": 0, "img_size": 518,
       "final_norm": True})            # the final LayerNorm (SALAD applies it, BoQ does not)
  # the rest of the original's zoo: CCT-14/7x2-384 (model.backbone=cct384; inputs exactly
  # img_size x img_size) and HF ViT-B/16 (vit; 224 or 384)
  c.model.cct = ml_collections.ConfigDict(
      {"embed_dim": 384, "depth": 14, "num_heads": 6, "mlp_ratio": 3.0, "img_size": 384})
  c.model.hf_vit = ml_collections.ConfigDict(
      {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0})
  c.model.trunc_te = 0                 # CCT / ViT: keep the first N blocks (0: all)
  c.model.freeze_te = 0                # CCT / ViT: freeze all but the blocks after N (0: none;
                                       # -1: all but the blocks), as the original's --freeze_te
  c.model.non_local = False            # non-local blocks between the map and the aggregation
  c.model.num_non_local = 1            # ... applied this many times (one shared block)
  c.model.channel_bottleneck = 128     # ... their inner channels
  c.model.train_blocks = 0             # token backbones: only the last N blocks learn (SALAD
                                       # 4, BoQ 2); 0: all blocks learn
  # aggregations of today's place recognition models (models/aggregations.py)
  c.model.salad = ml_collections.ConfigDict(
      {"num_clusters": 64, "cluster_dim": 128, "token_dim": 256,   # 64 x 128 + 256 = 8448
       "hidden": 512, "dropout": 0.3,  # its MLPs (dropout while training)
       "out_dim": 0})                  # > 0: a linear layer to this size after SALAD (MegaLoc)
  c.model.boq = ml_collections.ConfigDict(
      {"proj_channels": 512, "num_queries": 64, "num_layers": 2, "row_dim": 32})
  c.model.mixvpr = ml_collections.ConfigDict(
      {"out_channels": 1024, "mix_depth": 4, "mlp_ratio": 1.0, "out_rows": 4})

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
  # GSV-Cities places (method=ms: P = train.batch_size places x K images per step); data.name
  # is then the validation and test dataset
  c.data.gsv = ml_collections.ConfigDict({
      "name": "gsv_cities",         # folder under data.root (Dataframes/, Images/);
                                    # synthetic_gsv: the synthetic world, generated
      "cities": "all",              # "all" or comma-separated city names
      "min_img_per_place": 4,       # places with fewer images are left out
      "img_per_place": 4,           # K images drawn per place and step
      "interpolation": "bilinear",  # the training resize: bilinear (SALAD, MixVPR) | bicubic
                                    # (BoQ)
      "randaugment_ops": 3,         # RandAugment on the host (0: none)
      "randaugment_magnitude": 9,   # of 31 bins (torchvision's default 9; BoQ 15)
      "synthetic": {k: v for k, v in synthetic_gsv.SyntheticGSVConfig().__dict__.items()},
  })

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
  c.train.lr_schedule = ""             # "" | constant | cosine (with warm-up) | step | linear
  c.train.cosine_scheduler = False     # the original's --cosine_scheduler
  c.train.warmup_epochs = 0            # cosine: linear warm-up from lr / 10 per epoch; other
                                       # schedules: per-step warm-up over these epochs (BoQ)
  c.train.warmup_steps = 0             # > 0: per-step linear warm-up over N steps (MixVPR)
  c.train.schedule = (60, 80)          # step: epochs where the learning rate drops x lr_gamma
  c.train.lr_gamma = 0.1               # step: the factor at each of those epochs
  c.train.lr_end_factor = 0.2          # linear (per step, SALAD): lr x 1 -> this factor ...
  c.train.lr_decay_steps = 4000        # ... over this many steps, then constant
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
  c.loss.ms_epsilon = 0.1              # multi-similarity (method=ms): the miner's margin
  c.loss.ms_alpha = 1.0                # ... the loss's positive and negative scales and base
  c.loss.ms_beta = 50.0
  c.loss.ms_base = 0.0

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
  c.eval.image_size = ()               # (H, W) of evaluation, validation and mining images;
                                       # () = data.image_size (the GSV recipes train at 224
                                       # and evaluate at 322)
  c.eval.datasets = ""                 # comma-separated names; "" = data.name
  # two folders of images evaluated instead of eval.datasets (any layout; `@` names give
  # recalls, names without coordinates give predictions and descriptors only)
  c.eval.database_folder = ""
  c.eval.queries_folder = ""
  c.eval.positive_radius = EVAL_RADIUS_M
  c.eval.recall_values = RECALL_VALUES  # N of recall@N
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
