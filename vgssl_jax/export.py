r"""Exports a trained retrieval network (backbone + aggregation) for use outside vgssl_jax.

  python -m vgssl_jax.export --checkpoint runs/vicreg --out model.safetensors

--checkpoint: a run's workdir, its checkpoints/ folder or one step folder (the best step by
validation recall@5, else the latest). --out: `.safetensors` or `.npz`. Names are
torchvision's under `backbone.` plus `aggregation.gem.p` and `aggregation.fc.{weight,bias}`
(a DeiT's and a DINOv2's official names under `backbone.`), in PyTorch layouts (see
vgssl_jax.models.weights.export); a network with the layout of a published release (DINOv2
+ SALAD, MegaLoc, BoQ, MixVPR) is written with that release's names
(vgssl_jax.models.weights.releases). A .safetensors header also holds the method, model
settings and image size (read_export_metadata).
"""

from __future__ import annotations

from vgssl_jax import cpu_env, interrupts, logs

if __name__ == "__main__":
  interrupts.stop_quietly()  # Ctrl-C while the libraries load: one line, no traceback
  logs.quiet_third_party()
  cpu_env.apply()

# pylint: disable=wrong-import-position
import logging
import sys

import jax
from absl import app, flags

from vgssl_jax import cli
from vgssl_jax.errors import USER_ERRORS
from vgssl_jax.models.network import init_variables
from vgssl_jax.models.weights import export as weights_export
from vgssl_jax.objectives.registry import build_network
from vgssl_jax import checkpoints
from vgssl_jax.models import backbones
from vgssl_jax.models.weights import releases


def export(checkpoint: str, out: str) -> dict:
  """Writes the checkpoint's retrieval network to `out`; returns what was written."""
  weights_export.check_export_path(out)
  directory, step, meta = checkpoints.read_meta(checkpoint)
  image_size = tuple(meta.get("image_size") or (224, 224))
  model_config = checkpoints.model_config_from(meta["model"])
  model = build_network(model_config, meta["method"], image_size)
  template = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), image_size))
  variables = checkpoints.restore_variables(
      directory, step, template, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  metadata = {"format": "vgssl_jax descriptor model", "checkpoint": f"{directory}/{step}",
              "step": step, "method": meta["method"],
              # the recorded settings in today's meaning, the aggregation always named
              "model": {**backbones.upgrade_settings(meta["model"]),
                        "aggregation": model_config.aggregation},
              "image_size": list(image_size)}
  state = weights_export.export_descriptor_model(variables, out, metadata,
                                                 releases.official_names(model_config))
  logging.info("exported step %d of %s to %s: %s", step, directory, out,
               weights_export.summarize(state))
  return state


_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a run's workdir, its checkpoints/ folder "
                                   "or one step folder")
_OUT = flags.DEFINE_string("out", None, "output file: .safetensors or .npz")
OPTIONS = """
Options:
  --checkpoint=PATH      a run's workdir, its checkpoints/ folder or one step folder
  --out=FILE             the file to write: .safetensors or .npz"""


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"error: unexpected arguments {argv[1:]}")
  logs.setup(None)
  if not _CHECKPOINT.value or not _OUT.value:
    cli.fail("error: --checkpoint and --out are required (--help shows the options)")
  try:
    state = export(_CHECKPOINT.value, _OUT.value)
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")
  print(f"{_OUT.value}: {weights_export.summarize(state)}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.plain_flags_parser(__doc__, OPTIONS))
