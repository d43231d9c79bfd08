"""A weights file given to score a model: a published release of today's models (SALAD,
MegaLoc, BoQ, MixVPR; releases.py) or a VG-SSL checkpoint / one of our exports (vgssl.py),
told apart by the file's keys."""

from __future__ import annotations

from vgssl_jax.models.weights import releases, vgssl
from vgssl_jax.models.weights.files import State, load_state_dict


def import_state(state: State, variables: dict, model_config) -> tuple[dict, dict]:
  """(variables with the file's network, a report {"layout", "loaded", "ignored",
  "stage2"}) for the network model_config describes; ConfigError when it does not fit."""
  release = releases.recognise(state)
  if release is not None:
    return releases.import_release(release, state, variables, model_config)
  return vgssl.import_vgssl_state(state, variables, model_config.backbone)


def import_file(path: str, variables: dict, model_config) -> dict:
  """Network `variables` with the backbone and aggregation (and a stage-2 network's
  re-ranker) of the weights file `path`; logs what was loaded and ignored."""
  variables, report = import_state(load_state_dict(path), variables, model_config)
  vgssl.log_report(path, report)
  return variables
