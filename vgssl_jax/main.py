r"""Training from a config (the command; the work is in vgssl_jax.training.run).

  python -m vgssl_jax.main --config configs/demo.py --workdir runs/demo
  python -m vgssl_jax.main --config configs/vicreg_msls.py --workdir runs/vicreg \
      --config.data.root=/data/datasets

Running the same command again resumes the run from its last checkpoint. Without
--workdir the run goes to runs/<method>_<dataset>.
"""

from __future__ import annotations

from vgssl_jax import cpu_env, interrupts, logs

if __name__ == "__main__":
  interrupts.stop_quietly()  # Ctrl-C while the libraries load: one line, no traceback
  logs.quiet_third_party()
  cpu_env.apply()  # re-executes with the CPU malloc defaults before anything else loads

# pylint: disable=wrong-import-position
import os

from absl import app

from vgssl_jax import cli

_CONFIG, _WORKDIR = cli.define_flags()


def default_workdir(config) -> str:
  return os.path.join("runs", f"{config.method}_{config.data.name}")


def main(argv):
  from vgssl_jax.training.run import train_and_evaluate  # after the flags: fast --help
  cli.run_main(argv, _CONFIG, _WORKDIR, default_workdir, train_and_evaluate)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(__doc__))
