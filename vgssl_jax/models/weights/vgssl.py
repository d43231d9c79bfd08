"""Trained VG-SSL checkpoints imported (backbone + GeM + FC), e.g. to score published models.

Key layouts (the original's `model/network.py` and `util.py`):
  * VG-SSL: the ResNet is `nn.Sequential(*list(resnet.children())[:-2])` ([:-3] for
    conv4), so its keys are `backbone.0.weight` (conv1), `backbone.1.*` (bn1),
    `backbone.4.*` .. `backbone.7.*` (layer1 .. layer4); children 2 and 3 (ReLU, max-pool)
    have no tensors. The aggregation is
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
from vgssl_jax.models.weights.files import State, load_state_dict
from vgssl_jax.models.weights.names import (from_torch_state, replace_subtrees, subtrees,
                                           torch_layout)

# VG-SSL's nn.Sequential of ResNet children -> torchvision names (2: ReLU, 3: max-pool).
SEQUENTIAL_BACKBONE = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                       "7": "layer4"}
# the re-ranking network's own modules (GeoLocalizationNetRerank), named alike on both sides
STAGE2_MODULES = ("local_head.", "Reranker.")
_DEIT_HINTS = ("cls_token", "dist_token", "pos_embed", "patch_embed.", "blocks.")


def _backbone_name(key: str) -> str:
  """`backbone.4.0.conv1.weight` -> `backbone.layer1.0.conv1.weight`; torchvision names and
  keys of other structures stay as they are (the strict load then lists them)."""
  head, _, rest = key[len("backbone."):].partition(".")
  if head in ("0", "1") and "." not in rest:        # conv1 / bn1 tensors
    return f"backbone.{SEQUENTIAL_BACKBONE[head]}.{rest}"
  if head in ("4", "5", "6", "7") and rest[:1].isdigit():  # layerN.<block>...
    return f"backbone.{SEQUENTIAL_BACKBONE[head]}.{rest}"
  return key


def is_deit_state(state: State) -> bool:
  """Whether a state dict holds a DeiT (cls/dist tokens, position embedding, blocks)."""
  return any(k.removeprefix("backbone.").startswith(_DEIT_HINTS) for k in state)


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


def canonical_vgssl_state(state: State, target_shapes: dict, deit: bool = False
                          ) -> tuple[State, dict]:
  """A VG-SSL / exported state dict renamed to our export layout, and a report.

  target_shapes: {our export name: torch shape} of the network to fill (names.torch_layout);
  `deit`: whether it is a DeiT. The report: {"layout": "projector" | "plain" | "export" |
  "deit", "loaded": {our name: source key}, "ignored": {reason: [keys]}}. Keys it cannot
  place are kept (under their own names), so that the strict load lists them.
  """
  keys = set(state)
  if is_deit_state(state) != deit:
    if deit:
      raise ConfigError("this is a ResNet checkpoint (no cls_token/pos_embed/blocks keys) but "
                        "model.backbone=deit: set --config.model.backbone to the checkpoint's "
                        "ResNet (resnet{18,50,101}conv{4,5}).")
    raise ConfigError("this is a DeiT checkpoint (it has cls_token/pos_embed/blocks keys) but "
                      "model.backbone is a ResNet: set --config.model.backbone=deit (and "
                      "model.vit.* to its sizes).")
  ignored = {"ssl_model.* (SSL wrapper copies)": [], "projector": [],
             "num_batches_tracked": []}
  out, loaded = {}, {}
  if deit:
    layout, renames = "deit", {}
  else:
    layout, ours_to_key = _aggregation_layout(state, target_shapes)
    renames = {k: n for n, k in ours_to_key.items()}
  for key in sorted(keys):
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
    # the projector: DeiT's aggregation is the identity, so aggregation.* is the projector
    if ((layout == "deit" and key.startswith("aggregation.")) or key.startswith("projector.")
        or (layout == "projector" and key.startswith("aggregation.1."))):
      ignored["projector"].append(key)
      continue
    if deit:
      # Lightning: backbone.<timm name>; train.py's bare DeiT: <timm name>
      name = key if key.startswith("backbone.") else f"backbone.{key}"
    else:
      name = _backbone_name(key) if key.startswith("backbone.") else key
    out[name] = state[key]
    loaded[name] = key
  return out, {"layout": layout, "loaded": loaded,
               "ignored": {k: v for k, v in ignored.items() if v}}


def _check_position_grid(canonical: State, target: dict) -> None:
  want = target["params"]["backbone"]["pos_embed"].shape
  got = canonical.get("backbone.pos_embed")
  if got is not None and got.shape[1] != want[1]:
    raise ConfigError(
        f"the checkpoint's position embedding is for {got.shape[1] - 2} patches, this model's "
        f"for {want[1] - 2}: set --config.data.image_size to the size the checkpoint was "
        "trained at (VG-SSL trains DeiT at 480,640: 1200 patches of 16x16).")
  if got is not None and got.shape[2] != want[2]:
    raise ConfigError(f"the checkpoint's DeiT is {got.shape[2]} wide, this model "
                      f"{want[2]}: set --config.model.vit.embed_dim={got.shape[2]} (and "
                      "model.vit.depth / num_heads to the checkpoint's).")


def import_vgssl_state(state: State, variables: dict) -> tuple[dict, dict]:
  """(variables, report): the retrieval network (backbone + GeM + FC, or the DeiT) of a
  VG-SSL state dict loaded into GeoLocalizationNet `variables` (the projector keeps its
  values), and a stage-2 network's local head and R2Former when the state has them
  (else they keep their values: report["stage2"] lists the ones loaded). See
  `import_vgssl_checkpoint`."""
  deit = "pos_embed" in variables["params"]["backbone"]
  stage2 = [m[:-1] for m in STAGE2_MODULES
            if m[:-1] in variables["params"] and any(k.startswith(m) for k in state)]
  target = subtrees(variables, ("backbone", "aggregation", *stage2))
  shapes = {name: shape for name, (_, _, shape) in torch_layout(target).items()}
  # a re-ranking checkpoint into a global-only network: its stage-2 tensors have no place
  extra = [k for k in state if k.startswith(STAGE2_MODULES) and k.split(".")[0] not in stage2]
  state = {k: v for k, v in state.items() if k not in extra}
  canonical, report = canonical_vgssl_state(state, shapes, deit)
  if extra:
    report["ignored"]["stage-2 (this network has no local tokens)"] = extra
  if deit:
    _check_position_grid(canonical, target)
  loaded = from_torch_state(canonical, target, "Check model.backbone, model.width (model.vit.* "
                            "for DeiT) and model.fc_output_dim against the checkpoint's training "
                            "settings.")
  report["stage2"] = stage2  # e.g. ["local_head", "Reranker"]; [] for stage-1 states
  return replace_subtrees(variables, loaded), report


def import_vgssl_checkpoint(path: str, variables: dict) -> dict:
  """GeoLocalizationNet `variables` with backbone, GeM p and FC from a VG-SSL checkpoint.

  Accepts the original's Lightning (`train_ssl.py`) and `train.py` checkpoints, with
  Sequential-index (`backbone.0.weight`) or torchvision-named (`backbone.conv1.weight`)
  ResNets or DeiTs (timm names, under `backbone.` or bare), and files written by
  `export_descriptor_model`. `ssl_model.*` and projector
  tensors are ignored; every other tensor must find its place. Logs what was loaded.
  The loaded subtrees hold NumPy arrays (place them with jax.device_put).
  """
  variables, report = import_vgssl_state(load_state_dict(path), variables)
  loaded = report["loaded"]
  n_backbone = sum(k.startswith("backbone.") for k in loaded)
  logging.info("imported %s (%s layout): %d backbone tensors, %s",
               path, report["layout"], n_backbone,
               ", ".join(f"{k} <- {v}" for k, v in loaded.items() if k.startswith("aggregation.")))
  for reason, keys in report["ignored"].items():
    logging.info("  ignored %d %s tensors", len(keys), reason)
  return variables
