"""The published checkpoints of today's place-recognition models, imported and exported in
their official key layouts (read without torch, executing nothing from the file):

  SALAD     dino_salad.ckpt (Lightning)      backbone.model.<DINOv2>, aggregator.<SALAD>
  MegaLoc   model.safetensors                 backbone.<DINOv2>, aggregator.agg.<SALAD>,
                                              aggregator.linear
  BoQ       dinov2_12288.pth                  backbone.dino.<DINOv2>, aggregator.<BoQ>
  BoQ       resnet50_16384.pth                backbone.net.<ResNet-50 as Sequential 0, 1, 4,
                                              5, 6 = conv1, bn1, layer1..3>, aggregator.<BoQ>
  MixVPR    resnet50_MixVPR_4096_...ckpt      backbone.model.<torchvision ResNet-50 without
                                              layer4>, aggregator.<MixVPR>

and the original's off-the-shelf networks (`--off_the_shelf`, ResNet-50/101 + GeM + FC 2048,
the pooled vector L2-normalised before the FC):

  cirtorch  rSfM120k-tl-resnet50-gem-w-*.pth,  features.<ResNet as Sequential 0, 1, 4..7>,
  (Radenović) gl18-tl-resnet101-gem-w-*.pth ...  pool.p, whiten.{weight,bias}
  Naver     Resnet50-AP-GeM.pt,                module.<torchvision ResNet>, module.adpool.p,
            Resnet-101-AP-GeM.pt               module.fc.{weight,bias} (module.last_linear.*
                                               is the same layer again; DataParallel's
                                               `module.` is dropped when the file is read)

A release is recognised by its keys; the config must describe its network (configs/
salad_dinov2.py, megaloc.py, boq_dinov2.py, boq_resnet50.py, mixvpr_resnet50.py): another
backbone or aggregation is refused naming the config to use, missing or extra tensors are
listed. Our own names are the Flax paths (`backbone.*`, `aggregation.*`, see names.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vgssl_jax.errors import ConfigError
from vgssl_jax.models import backbones
from vgssl_jax.models.weights import dinov2_weights, torchvision
from vgssl_jax.models.weights.files import State
from vgssl_jax.models.weights.original import renamed
from vgssl_jax.models.weights.names import (from_torch_state, replace_subtrees,
                                           subtrees)

# BoQ's ResNet: nn.Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3)
_SEQUENTIAL = tuple((f"{i}.", f"{name}.") for i, name in torchvision.SEQUENTIAL_BACKBONE.items())


def _same(key: str) -> str:
  return key


def _dinov2(state: State, target: dict) -> State:
  state = dinov2_weights.with_optional(state, target)
  dinov2_weights.check_grid(state, target)
  return state


def _off_the_shelf(model_config) -> bool:
  """cirtorch's and Naver's GeM networks: L2 after the pooling, an FC to 2048."""
  return model_config.l2 == "after_pool" and model_config.fc_output_dim == 2048


@dataclasses.dataclass(frozen=True)
class Release:
  name: str
  config: str                      # the config file describing its network
  family: str                      # models.backbones family name
  aggregation: str                 # models.aggregations name
  marker: str                      # a key only this release has
  # official prefix -> our prefix; the backbone's part renamed by `backbone_names`
  prefixes: dict[str, str]
  backbone_names: Callable[[str], str] = _same       # official backbone key -> ours
  backbone_official: Callable[[str], str] = _same    # ours -> official (export)
  # which of the family's networks: e.g. SALAD with a linear layer after it is MegaLoc
  fits: Callable[..., bool] = lambda model_config: True
  # (state in our names, target variables) -> the state completed and checked (DINOv2:
  # the mask token some releases lack; the position grid)
  prepare: Callable[[State, dict], State] = lambda state, target: state
  # official keys that repeat another tensor of the file (Naver's last_linear = fc)
  skip: tuple[str, ...] = ()

  def recognises(self, state: State) -> bool:
    return self.marker in state

  def to_ours(self, key: str) -> str | None:
    if key.startswith(self.skip):
      return None
    for official, ours in self.prefixes.items():
      if key.startswith(official):
        rest = key[len(official):]
        return ours + (self.backbone_names(rest) if ours == "backbone." else rest)
    return None

  def to_official(self, key: str) -> str:
    for official, ours in sorted(self.prefixes.items(), key=lambda p: -len(p[1])):
      if key.startswith(ours):
        rest = key[len(ours):]
        return official + (self.backbone_official(rest) if ours == "backbone." else rest)
    return key


RELEASES: tuple[Release, ...] = (
    Release("MegaLoc", "configs/megaloc.py", "dinov2", "salad", "aggregator.linear.weight",
            {"backbone.": "backbone.", "aggregator.agg.": "aggregation.",
             "aggregator.linear.": "aggregation.linear."},
            fits=lambda mc: bool(mc.salad.out_dim), prepare=_dinov2),
    Release("SALAD", "configs/salad_dinov2.py", "dinov2", "salad", "aggregator.dust_bin",
            {"backbone.model.": "backbone.", "aggregator.": "aggregation."},
            fits=lambda mc: not mc.salad.out_dim, prepare=_dinov2),
    Release("BoQ (DINOv2)", "configs/boq_dinov2.py", "dinov2", "boq", "backbone.dino.cls_token",
            {"backbone.dino.": "backbone.", "aggregator.": "aggregation."}, prepare=_dinov2),
    Release("BoQ (ResNet-50)", "configs/boq_resnet50.py", "resnet", "boq", "backbone.net.0.weight",
            {"backbone.net.": "backbone.", "aggregator.": "aggregation."},
            backbone_names=renamed(_SEQUENTIAL),
            backbone_official=renamed(tuple((ours, theirs) for theirs, ours in _SEQUENTIAL))),
    Release("MixVPR", "configs/mixvpr_resnet50.py", "resnet", "mixvpr",
            "aggregator.mix.0.mix.0.weight",
            {"backbone.model.": "backbone.", "aggregator.": "aggregation."}),
    # the original's --off_the_shelf networks (configs/off_the_shelf.py)
    Release("cirtorch (Radenović) off-the-shelf", "configs/off_the_shelf.py", "resnet", "gem",
            "whiten.weight",
            {"features.": "backbone.", "pool.": "aggregation.gem.", "whiten.": "aggregation.fc."},
            backbone_names=renamed(_SEQUENTIAL),
            backbone_official=renamed(tuple((ours, theirs) for theirs, ours in _SEQUENTIAL)),
            fits=_off_the_shelf),
    # (the file's DataParallel `module.` prefix is gone once read: files.unwrap_state)
    Release("Naver AP-GeM off-the-shelf", "configs/off_the_shelf.py", "resnet", "gem",
            "adpool.p",
            {"adpool.": "aggregation.gem.", "fc.": "aggregation.fc.", "conv1.": "backbone.conv1.",
             "bn1.": "backbone.bn1.", "layer": "backbone.layer"},
            fits=_off_the_shelf, skip=("last_linear.",)),
)


def _salad_out(model_config) -> str:
  out = model_config.salad.out_dim
  return f" (model.salad.out_dim={out})" if out else ""


def recognise(state: State) -> Release | None:
  """The release whose layout `state` has, or None."""
  return next((r for r in RELEASES if r.recognises(state)), None)


def release_for(family: str, aggregation: str, model_config) -> Release | None:
  """The release whose layout a network of this family and aggregation is exported in."""
  return next((r for r in RELEASES if r.family == family and r.aggregation == aggregation
               and r.fits(model_config)), None)


def official_names(model_config) -> Callable[[str], str]:
  """Our export name -> the name an export of this network is written with: its release's
  (a DINOv2 + SALAD network comes out as a SALAD release), else its family's original."""
  family, _ = backbones.family(model_config.backbone)
  release = release_for(family.name, backbones.aggregation_name(model_config), model_config)
  return release.to_official if release else family.original.to_original


def import_release(release: Release, state: State, variables: dict, model_config
                   ) -> tuple[dict, dict]:
  """(variables with backbone and aggregation from `state`, a report) for the network
  model_config describes; ConfigError naming the config to use when the network is not the
  release's, or listing the tensors that do not fit."""
  family, _ = backbones.family(model_config.backbone)
  aggregation = backbones.aggregation_name(model_config)
  if (release.family, release.aggregation) != (family.name, aggregation) or \
      not release.fits(model_config):
    raise ConfigError(f"this is a {release.name} checkpoint (a {release.family} backbone with "
                      f"{release.aggregation}), but the config describes model.backbone="
                      f"{model_config.backbone} with model.aggregation={aggregation}"
                      f"{_salad_out(model_config)}: use --config {release.config}.")
  ours, ignored = {}, []
  for key, value in state.items():
    name = release.to_ours(key)
    if name is None:
      ignored.append(key)
    else:
      ours[name] = value
  target = subtrees(variables, ("backbone", "aggregation"))
  ours = release.prepare(ours, target)
  hint = (f"Check the config against {release.config} (the sizes of model.{release.aggregation} "
          "and the backbone).")
  loaded = from_torch_state(ours, target, hint, shown=release.to_official)
  report = {"layout": release.name, "stage2": [],
            "loaded": {k: release.to_official(k) for k in ours},
            "ignored": {"outside backbone and aggregator": ignored} if ignored else {}}
  return replace_subtrees(variables, loaded), report
