"""Backbones by name (`model.backbone`): each family owns everything about its backbones.

A `BackboneFamily` says which names it owns (`parse`), builds the Flax module, and declares
what the module gives (models.features: a feature map, class tokens, register tokens) with
their sizes, the aggregation it takes by default, its ImageNet weights loader, its size
checks, the parameters the original does not train, its local tokens for stage-2
re-ranking, the original's names of its tensors (VG-SSL checkpoints), and whether its
training step wants oneDNN's matrix products on CPU. Nothing outside this registry and the
family's own modules tests a backbone's name.

Adding a backbone = its module in models/ and one entry in FAMILIES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax

from vgssl_jax.models import cct, deit, dinov2, hf_vit, local_tokens, resnet, vgg
from vgssl_jax.models.features import FEATURE_MAP, PREFIX, REGISTERS, Features, FeatureShapes
from vgssl_jax.models.layers import Dtype
from vgssl_jax.models.weights import dinov2_weights, timm_deit, torchvision, zoo_weights
from vgssl_jax.models.weights.original import OriginalNames

# (features, the aggregation's parameters, num_local, (H, W)) -> (features (N, n, C),
# [x, y, attention] (N, n, 3)): stage 2's local tokens of a family
LocalTokens = Callable[[Features, dict, int, tuple[int, int]], tuple[jax.Array, jax.Array]]


def _no_check(model_config, image_size, **args) -> None:
  del model_config, image_size, args


def _same(settings: dict) -> dict:
  return settings


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
  name: str
  names: str                                   # the valid names, for messages
  parse: Callable[[str], dict | None]          # name -> build arguments, None if not ours
  build: Callable[..., nn.Module]  # (model config, dtype, image size, **arguments) -> module
  # (model config, training image size, **arguments) -> what it gives
  shapes: Callable[..., FeatureShapes]
  default_aggregation: str                     # model.aggregation "" means this one
  # (weights file, network variables, training image size) -> variables with the
  # backbone (and what of the aggregation the file holds) replaced
  load_pretrained: Callable[[str, dict, tuple[int, int]], dict]
  weights: str                                 # what model.pretrained is, for messages
  original: OriginalNames                      # the original's names of its tensors
  # (model config, image size) -> None; ValueError naming the setting if impossible
  check: Callable[..., None] = _no_check
  keys: tuple[str, ...] = ()                   # config keys (or sections) only it reads
  # (model config, **arguments) -> module paths of the backbone that do not learn (e.g. the
  # early ResNet layers without model.unfreeze, as the original)
  frozen: Callable[..., tuple[str, ...]] = lambda mc, **args: ()
  # stage 2: the token grid at (H, W) inputs, and the local tokens (None: it has none)
  token_grid: Callable[..., tuple[int, int]] | None = None
  local_tokens: LocalTokens | None = None
  # (model config, aggregation spec) -> None; ValueError when it cannot give local tokens
  check_local: Callable[..., None] = _no_check
  # (build arguments) -> the XLA option set its CPU training step wants (cpu_env.STEP_OPTIONS:
  # "onednn_dots", "xla_convolutions"; "" none)
  cpu_step: Callable[..., str] = lambda **args: ""
  # a checkpoint's recorded `model` settings of an older version -> today's
  upgrade: Callable[[dict], dict] = _same
  # parameter paths renamed since older checkpoints: (old "a.b.", new "c.d.") prefixes
  legacy_paths: tuple[tuple[str, str], ...] = ()


# ----------------------------------------------------------------------------- ResNet

def _parse_resnet(name: str) -> dict | None:
  try:
    depth, last_stage = resnet.parse_backbone(name)
  except ValueError:
    return None
  return {"depth": depth, "last_stage": last_stage}


def _resnet_grid(image_size, halvings: int) -> tuple[int, int]:
  """The map's grid after `halvings` stride-2 layers (each rounds up)."""
  h, w = image_size
  for _ in range(halvings):
    h, w = -(-h // 2), -(-w // 2)
  return h, w


def _resnet_token_grid(model_config, image_size) -> tuple[int, int]:
  """layer3's grid (stride 16: conv1, max-pool, layer2, layer3)."""
  del model_config
  return _resnet_grid(image_size, 4)


def _resnet_local_tokens(features, aggregation_params, num_local, image_hw):
  return local_tokens.cnn_tokens(features.local["layer3"], features.feature_map,
                                 aggregation_params["fc"]["kernel"], num_local, image_hw)


def _resnet_check_local(model_config, spec) -> None:
  mc = model_config
  _, last_stage = resnet.parse_backbone(mc.backbone)
  if last_stage != 5 or not spec.pooled_channels or not mc.fc_output_dim:
    raise ValueError(
        f"model.local_dim={mc.local_dim}: local tokens (re-ranking) need model.backbone=deit or "
        f"a conv5 ResNet with a pooling aggregation and an FC (its saliency is layer4 x FC); "
        f"this is {mc.backbone} with model.aggregation={spec.name}, model.fc_output_dim="
        f"{mc.fc_output_dim}. Use e.g. resnet50conv5 + gem, or set model.local_dim=0")


RESNET = BackboneFamily(
    name="resnet", names=resnet.VALID_NAMES, parse=_parse_resnet,
    build=lambda mc, dtype, image_size, depth, last_stage: resnet.ResNet(
        depth, last_stage, mc.width, dtype),
    shapes=lambda mc, image_size, depth, last_stage: FeatureShapes(
        (FEATURE_MAP,), map_channels=resnet.features_dim(depth, last_stage, mc.width),
        map_hw=_resnet_grid(image_size, last_stage)),
    default_aggregation="gem",
    load_pretrained=lambda path, variables, image_size: torchvision.load_torchvision_backbone(
        path, variables),
    weights="torchvision's ImageNet ResNet weights (e.g. resnet50-0676ba61.pth)",
    original=torchvision.ORIGINAL_NAMES,
    keys=("model.width",),
    frozen=lambda mc, **args: () if mc.unfreeze else ("conv1", "bn1", "layer1", "layer2"),
    token_grid=_resnet_token_grid, local_tokens=_resnet_local_tokens,
    check_local=_resnet_check_local,
    # bottleneck ResNets' 1x1 convolutions are matrix products (cpu_env)
    cpu_step=lambda depth, last_stage: "onednn_dots" if depth >= 50 else "")


# ----------------------------------------------------------------------------- DeiT

def _build_deit(mc, dtype, image_size):
  v = mc.vit
  # the re-ranking network cuts (or pos_resizes) the position grid for other sizes
  return deit.DistilledViT(grid=(image_size[0] // deit.PATCH, image_size[1] // deit.PATCH),
                           embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
                           mlp_ratio=v.mlp_ratio, dtype=dtype,
                           other_sizes="crop" if mc.local_dim else "resize")


def _check_deit(mc, image_size):
  v = mc.vit
  if image_size[0] % deit.PATCH or image_size[1] % deit.PATCH:
    raise ValueError(f"data.image_size={image_size[0]},{image_size[1]}: DeiT cuts 16x16 patches, "
                     "so height and width must be multiples of 16 (e.g. 480,640)")
  if min(v.embed_dim, v.depth, v.num_heads) < 1 or v.embed_dim % v.num_heads:
    raise ValueError(f"model.vit.embed_dim={v.embed_dim} must be a positive multiple of "
                     f"model.vit.num_heads={v.num_heads}, and model.vit.depth={v.depth} >= 1")


def _deit_local_tokens(features, aggregation_params, num_local, image_hw):
  del aggregation_params
  return local_tokens.deit_tokens(features.local["tokens"], features.local["attention"],
                                  num_local, image_hw)


def _deit_upgrade(settings: dict) -> dict:
  """Records from before the DeiT heads were an aggregation: model.aggregation held the
  config's unused default (e.g. "gem"); the network they describe is the heads'."""
  if settings.get("aggregation") != deit.AGGREGATION:
    settings = {**settings, "aggregation": deit.AGGREGATION}
  return settings


DEIT = BackboneFamily(
    name="deit", names="deit (DeiT-S distilled; sizes in model.vit)",
    parse=lambda name: {} if name == "deit" else None, build=_build_deit,
    shapes=lambda mc, image_size: FeatureShapes((PREFIX,), token_dim=mc.vit.embed_dim,
                                                prefix_tokens=2),
    default_aggregation=deit.AGGREGATION,
    load_pretrained=lambda path, variables, image_size: timm_deit.load_timm_deit(
        path, variables, (image_size[0] // deit.PATCH, image_size[1] // deit.PATCH)),
    weights="timm's ImageNet DeiT-S distilled weights (deit_small_distilled_patch16_224)",
    original=timm_deit.ORIGINAL_NAMES,
    check=_check_deit, keys=("model.vit.",),
    token_grid=lambda mc, image_size: (image_size[0] // deit.PATCH, image_size[1] // deit.PATCH),
    local_tokens=_deit_local_tokens,
    upgrade=_deit_upgrade,
    legacy_paths=(("net.backbone.head.", "net.aggregation.head."),
                  ("net.backbone.head_dist.", "net.aggregation.head_dist.")))

# ----------------------------------------------------------------------------- DINOv2

def _dinov2_size(mc, size: str) -> dinov2.Size:
  """The named model's size, with model.dinov2's non-zero entries instead (tiny models)."""
  named, d = dinov2.SIZES[size], mc.dinov2
  return dinov2.Size(d.embed_dim or named.embed_dim, d.depth or named.depth,
                     d.num_heads or named.num_heads, named.ffn)


def _build_dinov2(mc, dtype, image_size, size, registers):
  del image_size
  s = _dinov2_size(mc, size)
  return dinov2.DinoV2(s.embed_dim, s.depth, s.num_heads, s.ffn, registers, mc.dinov2.img_size,
                       bool(mc.dinov2.final_norm), mc.train_blocks, dtype=dtype)


def _check_dinov2(mc, image_size, size, registers):
  del registers
  h, w = image_size
  if h % dinov2.PATCH or w % dinov2.PATCH:
    raise ValueError(f"data.image_size={h},{w}: DINOv2 cuts 14x14 patches, so height and width "
                     f"must be multiples of 14: the nearest are {dinov2.nearest_sizes(h)} for the "
                     f"height and {dinov2.nearest_sizes(w)} for the width (the field evaluates "
                     "DINOv2 models at 322,322)")
  s = _dinov2_size(mc, size)
  if s.embed_dim % s.num_heads or min(s.embed_dim, s.depth, s.num_heads) < 1:
    raise ValueError(f"model.dinov2.embed_dim={s.embed_dim} must be a positive multiple of "
                     f"model.dinov2.num_heads={s.num_heads}")
  if not 0 <= mc.train_blocks <= s.depth:
    raise ValueError(f"model.train_blocks={mc.train_blocks} must be in 0..{s.depth} (the last N "
                     "blocks learn; 0: all)")
  if mc.dinov2.img_size % dinov2.PATCH or mc.dinov2.img_size < dinov2.PATCH:
    raise ValueError(f"model.dinov2.img_size={mc.dinov2.img_size} must be a multiple of 14 (the "
                     "position grid of the weights: 518 for DINOv2's releases)")


DINOV2 = BackboneFamily(
    name="dinov2", names=dinov2.VALID_NAMES, parse=dinov2.parse, build=_build_dinov2,
    shapes=lambda mc, image_size, size, registers: FeatureShapes(
        (FEATURE_MAP, PREFIX) + ((REGISTERS,) if registers else ()),
        map_channels=_dinov2_size(mc, size).embed_dim,
        map_hw=(image_size[0] // dinov2.PATCH, image_size[1] // dinov2.PATCH),
        token_dim=_dinov2_size(mc, size).embed_dim, prefix_tokens=1, registers=registers),
    default_aggregation="gem",
    load_pretrained=lambda path, variables, image_size: dinov2_weights.load_dinov2(path, variables),
    weights="DINOv2's released weights (e.g. dinov2_vitb14_pretrain.pth)",
    original=dinov2_weights.ORIGINAL_NAMES,
    check=_check_dinov2, keys=("model.dinov2.", "model.train_blocks"),
    frozen=lambda mc, size, registers: dinov2.frozen_paths(_dinov2_size(mc, size).depth,
                                                          mc.train_blocks, registers))

# ----------------------------------------------------------------------------- VGG16, AlexNet

def _check_plain(mc, image_size, arch):
  h, w = vgg.grid(arch, image_size)
  if h < 1 or w < 1:
    raise ValueError(f"data.image_size={image_size[0]},{image_size[1]} is too small for {arch} "
                     "(its map would be empty)")
  if mc.width < 1:
    raise ValueError(f"model.width={mc.width} must be >= 1 (64: torchvision's)")


def _is_plain_state(state) -> bool:
  keys = {k.removeprefix("backbone.") for k in state}
  return ("28.weight" in keys or "10.weight" in keys) and not any(
      k.startswith(("4.0.", "layer1.")) for k in keys)


PLAIN_CNN = BackboneFamily(
    name="vgg", names="vgg16, alexnet", parse=lambda n: {"arch": n} if n in vgg.LAYERS else None,
    build=lambda mc, dtype, image_size, arch: vgg.PlainCNN(arch, mc.width, dtype),
    shapes=lambda mc, image_size, arch: FeatureShapes(
        (FEATURE_MAP,), map_channels=vgg.channels(arch, mc.width),
        map_hw=vgg.grid(arch, image_size)),
    default_aggregation="gem", load_pretrained=zoo_weights.load_plain_cnn,
    weights="torchvision's ImageNet VGG16 / AlexNet weights (vgg16-397923af.pth, "
            "alexnet-owt-7be5be79.pth)",
    original=OriginalNames("a VGG16 / AlexNet", _is_plain_state), check=_check_plain,
    keys=("model.width",),
    frozen=lambda mc, arch: () if mc.unfreeze else vgg.FROZEN[arch],
    cpu_step=lambda arch: "xla_convolutions")


# ----------------------------------------------------------------------------- CCT and ViT

def _kept_blocks(mc, depth: int) -> int:
  """The blocks kept by model.trunc_te (0: all, as the original's falsy 0)."""
  return mc.trunc_te if mc.trunc_te else depth


def _check_trunc_freeze(mc, depth: int) -> None:
  if not 0 <= mc.trunc_te <= depth:
    raise ValueError(f"model.trunc_te={mc.trunc_te} must be in 0..{depth} (0: keep all blocks)")
  if mc.freeze_te < -1 or mc.freeze_te > depth:
    raise ValueError(f"model.freeze_te={mc.freeze_te} must be in -1..{depth} (0: nothing "
                     "frozen; k: all but the blocks after k; -1: all but the blocks)")


def _frozen_blocks(mc, depth: int, blocks: str, others: tuple[str, ...]) -> tuple[str, ...]:
  """The original's --freeze_te k: every backbone parameter frozen, then the blocks with
  index > k learn again (so embeddings and the final norm stay frozen); 0 freezes nothing.
  --unfreeze does not apply to these backbones."""
  if not mc.freeze_te:
    return ()
  kept = _kept_blocks(mc, depth)
  return others + tuple(f"{blocks}/{i}" for i in range(min(mc.freeze_te + 1, kept)))


def _check_transformer(mc, section: str) -> None:
  """model.<section>'s sizes and model.trunc_te / freeze_te against its depth."""
  c = mc[section]
  _check_trunc_freeze(mc, c.depth)
  if c.embed_dim % c.num_heads or min(c.embed_dim, c.depth, c.num_heads) < 1:
    raise ValueError(f"model.{section}.embed_dim={c.embed_dim} must be a positive multiple of "
                     f"model.{section}.num_heads={c.num_heads}")


def _check_cct(mc, image_size):
  c = mc.cct
  _check_transformer(mc, "cct")
  if tuple(image_size) != (c.img_size, c.img_size):
    raise ValueError(f"data.image_size={image_size[0]},{image_size[1]}: CCT's position "
                     f"embedding is made for {c.img_size}x{c.img_size} images (the original "
                     f"needs --resize {c.img_size} {c.img_size}); set --config.data.image_size="
                     f"{c.img_size},{c.img_size} (and eval.image_size alike) or model.cct.img_size")


CCT = BackboneFamily(
    name="cct", names="cct384", parse=lambda n: {} if n == "cct384" else None,
    build=lambda mc, dtype, image_size: cct.CCT(
        mc.cct.embed_dim, _kept_blocks(mc, mc.cct.depth), mc.cct.num_heads, mc.cct.mlp_ratio,
        mc.cct.img_size, dtype),
    shapes=lambda mc, image_size: FeatureShapes(
        (FEATURE_MAP, PREFIX), map_channels=mc.cct.embed_dim,
        map_hw=(cct.grid(mc.cct.img_size),) * 2, token_dim=mc.cct.embed_dim, prefix_tokens=1,
        sequence=True),
    default_aggregation="seqpool", load_pretrained=zoo_weights.load_cct,
    weights="the CCT release's weights (cct_14_7x2_384_imagenet.pth)",
    original=OriginalNames("a CCT", lambda state: any(
        "tokenizer.conv_layers." in k for k in state)),
    check=_check_cct, keys=("model.cct.", "model.trunc_te", "model.freeze_te"),
    frozen=lambda mc: _frozen_blocks(
        mc, mc.cct.depth, "classifier/blocks",
        ("tokenizer", "classifier/positional_emb", "classifier/norm")),
    cpu_step=lambda: "xla_convolutions")


def _check_vit(mc, image_size):
  _check_transformer(mc, "hf_vit")
  h, w = image_size
  if h != w or h not in hf_vit.SIZES:
    raise ValueError(f"data.image_size={h},{w}: the original's ViT is "
                     "google/vit-base-patch16-224-in21k at 224,224 or google/vit-base-patch16-384 "
                     "at 384,384; set --config.data.image_size=224,224 or 384,384")
  if mc.fc_output_dim:
    raise ValueError(f"model.fc_output_dim={mc.fc_output_dim}: the original's ViT descriptor is "
                     "its CLS token and it never applies an FC (the setting only changes the "
                     "size it reports); set model.fc_output_dim=0")


VIT = BackboneFamily(
    name="vit", names="vit", parse=lambda n: {} if n == "vit" else None,
    build=lambda mc, dtype, image_size: hf_vit.HFViT(
        mc.hf_vit.embed_dim, _kept_blocks(mc, mc.hf_vit.depth), mc.hf_vit.num_heads,
        mc.hf_vit.mlp_ratio, image_size[0], dtype),
    shapes=lambda mc, image_size: FeatureShapes(
        (PREFIX,), token_dim=mc.hf_vit.embed_dim, prefix_tokens=1),
    default_aggregation="cls", load_pretrained=zoo_weights.load_hf_vit,
    weights="Hugging Face ViT weights (pytorch_model.bin / model.safetensors of "
            "google/vit-base-patch16-224-in21k or -384)",
    original=OriginalNames("a ViT", lambda state: any(
        "embeddings.patch_embeddings." in k for k in state)),
    check=_check_vit, keys=("model.hf_vit.", "model.trunc_te", "model.freeze_te"),
    frozen=lambda mc: _frozen_blocks(mc, mc.hf_vit.depth, "encoder/layer",
                                     ("embeddings", "layernorm")))

FAMILIES: tuple[BackboneFamily, ...] = (RESNET, DEIT, DINOV2, PLAIN_CNN, CCT, VIT)


def family(name: str) -> tuple[BackboneFamily, dict]:
  """(family, build arguments) of a backbone name; ValueError listing the valid names."""
  for fam in FAMILIES:
    args = fam.parse(name)
    if args is not None:
      return fam, args
  valid = "; ".join(f.names for f in FAMILIES)
  raise ValueError(f"unknown backbone {name!r}; expected one of {valid}")


def aggregation_name(model_config) -> str:
  """model.aggregation, or the family's default when it is "" (the schema's default)."""
  if model_config.aggregation:
    return model_config.aggregation
  fam, _ = family(model_config.backbone)
  return fam.default_aggregation


def shapes(model_config, image_size) -> FeatureShapes:
  """What the configured backbone gives at (H, W) training inputs, with its sizes."""
  fam, args = family(model_config.backbone)
  return fam.shapes(model_config, tuple(image_size), **args)


def check(model_config, image_size) -> None:
  """ValueError naming the setting when the backbone cannot take this config."""
  fam, args = family(model_config.backbone)
  fam.check(model_config, tuple(image_size), **args)


def token_grid(model_config, image_size) -> tuple[int, int]:
  """The grid stage 2 picks local tokens from, at (H, W) inputs."""
  fam, _ = family(model_config.backbone)
  return fam.token_grid(model_config, tuple(image_size))


def check_local(model_config, spec) -> None:
  """ValueError naming the setting when the backbone cannot give stage 2's local tokens."""
  mc = model_config
  if mc.local_dim < 0 or mc.num_local < 1:
    raise ValueError(f"model.local_dim={mc.local_dim} must be >= 0 and model.num_local="
                     f"{mc.num_local} >= 1")
  fam, _ = family(mc.backbone)
  if fam.local_tokens is None:
    raise ValueError(f"model.local_dim={mc.local_dim}: backbone {mc.backbone} gives no local "
                     "tokens for re-ranking; set model.local_dim=0")
  fam.check_local(mc, spec)


def frozen_modules(model_config) -> tuple[str, ...]:
  """Paths of the backbone modules that do not train ("backbone/conv1", ...; all train with
  model.unfreeze, as VG-SSL's runs)."""
  fam, args = family(model_config.backbone)
  return tuple(f"backbone/{m}" for m in fam.frozen(model_config, **args))


def build_backbone(model_config, dtype: Dtype, image_size: tuple[int, int]) -> nn.Module:
  """The backbone module of the `model` section of a config, for (H, W) training inputs."""
  fam, args = family(model_config.backbone)
  return fam.build(model_config, dtype, image_size, **args)


def cpu_step(model_config) -> str:
  """The XLA option set the backbone's CPU training step wants ("" none)."""
  fam, args = family(model_config.backbone)
  return fam.cpu_step(**args)


def check_pretrained(model_config, abstract_variables: dict, image_size) -> None:
  """Reads `model_config.pretrained` and matches it against the network's shapes (an
  abstract tree is enough): a wrong or damaged file is reported before anything is built."""
  load_pretrained(model_config, abstract_variables, image_size)


def load_pretrained(model_config, variables: dict, image_size) -> dict:
  """Network `variables` with the backbone from `model_config.pretrained` (ImageNet
  weights of the backbone's family, from a file the user supplies), for (H, W) training
  inputs."""
  fam, _ = family(model_config.backbone)
  return fam.load_pretrained(model_config.pretrained, variables, tuple(image_size))


def upgrade_settings(settings: dict) -> dict:
  """A checkpoint's recorded `model` settings in today's meaning (the family's upgrade)."""
  try:
    fam, _ = family(settings.get("backbone", ""))
  except ValueError:
    return settings
  return fam.upgrade(dict(settings))


LEGACY_PATHS = tuple(p for fam in FAMILIES for p in fam.legacy_paths)
