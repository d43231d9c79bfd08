"""Trained VG-SSL checkpoints imported (backbone + aggregation), e.g. to score published models.

Key layouts (the original's `model/network.py` and `util.py`):
  * VG-SSL: the backbone's keys as its family's OriginalNames translate them (a ResNet is
    `nn.Sequential` of torchvision's children, `backbone.0.weight` ...; a DeiT keeps timm's
    names with its heads, under `backbone.` or bare). The pooling aggregation is
      n_layers = 0: Sequential(Sequential(L2Norm, GeM, Flatten), Linear, L2Norm):
                    `aggregation.0.1.p`, `aggregation.1.{weight,bias}`;
      n_layers > 0: Sequential(<the above>, projector):
                    `aggregation.0.0.1.p`, `aggregation.0.1.{weight,bias}`, `aggregation.1.*`.
    Lightning checkpoints keep them under `state_dict` (with `ssl_model.*` copies),
    `train.py` checkpoints under `model_state_dict` with DataParallel's `module.` prefix.
  * our export (models.weights.export): `backbone.<torchvision name>`,
    `aggregation.gem.p`, `aggregation.fc.{weight,bias}`, in PyTorch layouts.
"""

from __future__ import annotations

import logging

import numpy as np

from vgssl_jax.errors import ConfigError
from vgssl_jax.models import backbones
from vgssl_jax.models.weights.files import State, load_state_dict
from vgssl_jax.models.weights.names import (from_torch_state, replace_subtrees, subtrees,
                                           torch_layout)
from vgssl_jax.models.weights.original import OriginalNames

# the re-ranking network's own modules (GeoLocalizationNetRerank), named alike on both sides
STAGE2_MODULES = ("local_head.", "Reranker.")


def original_aggregation_names(ours, projector: bool, pool_index: str) -> dict[str, str]:
  """Our export names of the aggregation's tensors -> the original's keys.

  The original's aggregation is Sequential(pooling block, Linear, L2Norm) with an FC and the
  pooling block alone without; the pooling block of GeM is Sequential(L2Norm, GeM, Flatten)
  (`l2` before_pool: GeM at index 1) or Sequential(GeM, ...) (index 0); NetVLAD is bare. With
  a projector (SSL, n_layers > 0) all of it is wrapped once more as index 0, the projector
  being index 1."""
  fc = any(n.startswith("aggregation.fc.") for n in ours)
  head = "aggregation." + ("0." if projector else "")
  pool = head + ("0." if fc else "")
  out = {}
  for name in ours:
    part, _, rest = name[len("aggregation."):].partition(".")
    if part == "fc":
      out[name] = f"{head}1.{rest}"
    elif part == "gem":
      out[name] = f"{pool}{pool_index}.{rest}"
    else:  # netvlad
      out[name] = f"{pool}{rest}"
  return out


def _aggregation_layout(state: State, target_shapes: dict) -> tuple[str, dict[str, str]]:
  """(layout, {our name: the state's key}) of the aggregation tensors in `state`:
  "export" (our own names), "plain" or "projector" (the original's, see
  original_aggregation_names). target_shapes: {our name: torch shape}."""
  ours = [n for n in target_shapes if n.startswith("aggregation.")]
  candidates = [("export", {n: n for n in ours})]
  for projector in (False, True):
    for index in ("1", "0"):
      candidates.append(("projector" if projector else "plain",
                         original_aggregation_names(ours, projector, index)))

  def fits(names):
    return all(k in state and tuple(np.shape(state[k])) == target_shapes[n]
               for n, k in names.items())

  def leftover(layout, names):  # aggregation.* keys the layout cannot place or ignore
    used = set(names.values())
    return [k for k in state if k.startswith("aggregation.") and k not in used and not (
        layout == "projector" and k.startswith("aggregation.1."))]
  found = [(layout, names) for layout, names in candidates if fits(names)]
  clean = [c for c in found if not leftover(*c)]
  if not found:
    wanted = "; ".join(f"{lay}: {', '.join(sorted(names.values())) or 'none'}"
                       for lay, names in candidates[:3])
    raise ConfigError(f"the checkpoint's aggregation tensors do not fit this model's "
                      f"(model.aggregation, model.l2, model.fc_output_dim): expected e.g. "
                      f"{wanted}.")
  return (clean or found)[0]


def _check_family(state: State, target_names, backbone: str | None) -> OriginalNames:
  """The original names of the target network's family (model.backbone `backbone`, or the
  family that recognises the network's own tensor names); ConfigError when the state dict
  holds another family's backbone."""
  if backbone:
    ours, _ = backbones.family(backbone)
  else:
    names = dict.fromkeys(target_names)
    ours = next(f for f in backbones.FAMILIES if f.original.recognise(names))
    backbone = ours.name
  if ours.original.recognise(state):
    return ours.original
  theirs = [f for f in backbones.FAMILIES if f is not ours and f.original.recognise(state)]
  if theirs:
    raise ConfigError(f"this is {theirs[0].original.what} checkpoint but model.backbone="
                      f"{backbone} is {ours.original.what}: set --config.model.backbone="
                      f"{theirs[0].names}, with its sizes.")
  return ours.original


def canonical_vgssl_state(state: State, target_shapes: dict, names: OriginalNames
                          ) -> tuple[State, dict]:
  """A VG-SSL / exported state dict renamed to our export layout, and a report.

  target_shapes: {our export name: torch shape} of the network to fill (names.torch_layout);
  `names`: the backbone family's original names. The report: {"layout": "projector" |
  "plain" | "export" | the family's own (names.layout), "loaded": {our name: source key}, "ignored":
  {reason: [keys]}}. Keys it cannot place are kept (under their own names), so that the
  strict load lists them.
  """
  ignored = {"ssl_model.* (SSL wrapper copies)": [], "projector": [],
             "num_batches_tracked": []}
  out, loaded = {}, {}
  if names.heads_in_backbone:
    layout, renames = names.layout, {}
  else:
    layout, ours_to_key = _aggregation_layout(state, target_shapes)
    renames = {k: n for n, k in ours_to_key.items()}
  for key in sorted(state):
    if key.startswith("ssl_model."):
      ignored["ssl_model.* (SSL wrapper copies)"].append(key)
      continue
    if key.endswith("num_batches_tracked"):
      ignored["num_batches_tracked"].append(key)
      continue
    if key.startswith(STAGE2_MODULES):  # stage 2: same names here
      out[key] = state[key]
      loaded[key] = key
      continue
    if key in renames:
      out[renames[key]] = state[key]
      loaded[renames[key]] = key
      continue
    # the projector (with the heads in the backbone, the original's aggregation.* is it)
    if ((names.heads_in_backbone and key.startswith("aggregation.")) or
        key.startswith("projector.") or (layout == "projector" and key.startswith("aggregation.1."))):
      ignored["projector"].append(key)
      continue
    name = names.to_ours(key)
    out[name] = state[key]
    loaded[name] = key
  return out, {"layout": layout, "loaded": loaded,
               "ignored": {k: v for k, v in ignored.items() if v}}


def import_vgssl_state(state: State, variables: dict, backbone: str | None = None
                       ) -> tuple[dict, dict]:
  """(variables, report): the retrieval network (backbone + aggregation) of a VG-SSL state
  dict loaded into GeoLocalizationNet `variables` (model.backbone `backbone`; by default
  the family its tensors' names show), the projector keeping its values, and a stage-2
  network's local head and R2Former when the state has them (else they keep their values:
  report["stage2"] lists the ones loaded). See `import_vgssl_checkpoint`."""
  stage2 = [m[:-1] for m in STAGE2_MODULES
            if m[:-1] in variables["params"] and any(k.startswith(m) for k in state)]
  target = subtrees(variables, ("backbone", "aggregation", *stage2))
  shapes = {name: shape for name, (_, _, shape) in torch_layout(target).items()}
  names = _check_family(state, shapes, backbone)
  # a re-ranking checkpoint into a global-only network: its stage-2 tensors have no place
  extra = [k for k in state if k.startswith(STAGE2_MODULES) and k.split(".")[0] not in stage2]
  state = {k: v for k, v in state.items() if k not in extra}
  canonical, report = canonical_vgssl_state(state, shapes, names)
  if extra:
    report["ignored"]["stage-2 (this network has no local tokens)"] = extra
  names.check(canonical, target)
  loaded = from_torch_state(canonical, target, "Check model.backbone, model.width (model.vit.* "
                            "for DeiT) and model.fc_output_dim against the checkpoint's training "
                            "settings.")
  report["stage2"] = stage2  # e.g. ["local_head", "Reranker"]; [] for stage-1 states
  return replace_subtrees(variables, loaded), report


def import_vgssl_checkpoint(path: str, variables: dict, backbone: str | None = None) -> dict:
  """GeoLocalizationNet `variables` with backbone, GeM p and FC from a VG-SSL checkpoint.

  Accepts the original's Lightning (`train_ssl.py`) and `train.py` checkpoints, with
  Sequential-index (`backbone.0.weight`) or torchvision-named (`backbone.conv1.weight`)
  ResNets or DeiTs (timm names, under `backbone.` or bare), and files written by
  `export_descriptor_model`. `ssl_model.*` and projector
  tensors are ignored; every other tensor must find its place. Logs what was loaded.
  The loaded subtrees hold NumPy arrays (place them with jax.device_put).
  """
  variables, report = import_vgssl_state(load_state_dict(path), variables, backbone)
  log_report(path, report)
  return variables


def log_report(path: str, report: dict) -> None:
  """Logs what an import loaded (backbone count, aggregation tensors) and ignored."""
  loaded = report["loaded"]
  aggregation = [f"{k} <- {v}" for k, v in loaded.items() if k.startswith("aggregation.")]
  logging.info("imported %s (%s layout): %d backbone tensors, %s", path, report["layout"],
               sum(k.startswith("backbone.") for k in loaded),
               ", ".join(aggregation) if len(aggregation) <= 4 else
               f"{len(aggregation)} aggregation tensors")
  for reason, keys in report["ignored"].items():
    logging.info("  ignored %d %s tensors", len(keys), reason)
