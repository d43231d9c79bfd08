"""Command-line plumbing shared by the entry points: config flags with clear errors, the
run's logging, and how a run ends (one line on stderr and in <workdir>/info.log)."""

from __future__ import annotations

import difflib
import errno
import logging
import os
import sys
import tempfile
import traceback

from absl import flags
from ml_collections import config_flags

from vgssl_jax import compilation_cache, interrupts, logs, sharding
from vgssl_jax.checks import ignored_overrides, resolve, validate
from vgssl_jax.errors import USER_ERRORS

HELP = """
Options:
  --config=FILE          experiment config, a Python file with get_config() (configs/)
  --config.S.K=VALUE     override key K of section S, e.g. --config.train.epochs=4
  --workdir=DIR          folder for logs, checkpoints, metrics and results
{extra}
All config keys, with their defaults and meaning: vgssl_jax/config.py (base_config).
The README and docs/ describe the datasets, the outputs and the stages."""


class ConfigFlag:
  """The experiment config of the command line: loaded from --config=FILE[:ARG] (the file
  run once, by `load_config`) with the --config.section.key=value overrides applied."""

  @property
  def value(self):
    return flags.FLAGS["config"].value


def define_flags() -> tuple[ConfigFlag, flags.FlagHolder]:
  workdir = flags.DEFINE_string("workdir", None, "Folder for logs, metrics and results.")
  return ConfigFlag(), workdir


def _flag_value(argv: list[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _without_flag(argv: list[str], name: str) -> list[str]:
  out, skip = [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
    elif arg.startswith(f"--{name}="):
      continue
    elif arg == f"--{name}" and i + 1 < len(argv):
      skip = True
    else:
      out.append(arg)
  return out


def fail(message: str, argv: list[str] | None = None) -> None:
  """Exits with `message` on stderr, also appended to the info.log of an explicit
  --workdir (errors in the command line, before logging is set up)."""
  workdir = _flag_value(argv or sys.argv, "workdir")
  if workdir:
    logs.append(workdir, message)
  sys.exit(message)


def overridden_keys(argv: list[str]) -> list[str]:
  """The config keys set on the command line (`--config.train.lr=...` -> "train.lr")."""
  return [a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")]


def _all_keys(config, prefix="") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, "items"):
      keys += _all_keys(v, prefix + k + ".")
  return keys


def last_overrides(argv: list[str]) -> list[str]:
  """`argv` with only the last of repeated `--config.key=value` overrides: absl keeps the
  last value of a scalar but ml_collections joins the values of a tuple setting."""
  keys = [a.split("=", 1)[0] if a.startswith("--config.") and "=" in a else None for a in argv]
  return [a for i, (a, k) in enumerate(zip(argv, keys)) if k is None or k not in keys[i + 1:]]


def flags_parser(doc: str, extra: str = ""):
  """The flags parser of an entry point: --help prints `doc` and the options."""
  def parser(argv: list[str]) -> list[str]:
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
      print(doc.strip() + "\n" + HELP.format(extra=extra))
      sys.exit(0)
    return parse_flags(argv)
  return parser


def plain_flags_parser(doc: str, options: str):
  """The flags parser of a command without a config: --help prints `doc` and `options`;
  an unknown flag is a one-line error."""
  def parser(argv: list[str]) -> list[str]:
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
      print(doc.strip() + "\n" + options)
      sys.exit(0)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(f"error: {e} (--help shows the options)", argv)
  return parser


class ConfigFileError(ValueError):
  """A config file that cannot be read, does not run or defines no get_config()."""


def load_config(spec: str):
  """The ConfigDict of "FILE" or "FILE:ARG" (get_config(ARG), big_vision's convention).

  The file runs once, as a script would: its folder is importable while it runs, so
  configs/<name>.py can import configs/recipes.py. ConfigFileError names the file (and
  line) when it cannot be read, fails, or defines no get_config()."""
  path, _, arg = spec.partition(":")
  try:
    with open(path) as f:
      source = f.read()
    code = compile(source, path, "exec")
  except SyntaxError as e:
    raise ConfigFileError(f"config file {path} has a syntax error at line {e.lineno}: "
                          f"{e.msg}.") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigFileError(f"cannot read config file {path}: {e}.") from None
  namespace = {"__name__": "config", "__file__": path}
  folder = os.path.dirname(os.path.abspath(path))
  sys.path.insert(0, folder)
  before = set(sys.modules)
  try:
    exec(code, namespace)  # pylint: disable=exec-used  # the user's own config file
    get_config = namespace.get("get_config")
    if not callable(get_config):
      raise ConfigFileError(f"config file {path} defines no get_config(): a config file is a "
                            "Python file whose get_config() returns the ConfigDict (see "
                            "configs/demo.py).")
    return get_config(arg) if arg else get_config()
  except ConfigFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    line = next((fr.lineno for fr in reversed(traceback.extract_tb(e.__traceback__))
                 if fr.filename == path), None)
    at = f" at line {line}" if line else ""
    raise ConfigFileError(f"config file {path} fails when run{at}: {type(e).__name__}: "
                          f"{e}.") from None
  finally:
    sys.path.remove(folder)
    for name in set(sys.modules) - before:  # a sibling (recipes) of another folder next time
      if getattr(sys.modules[name], "__file__", "") and os.path.dirname(
          os.path.abspath(sys.modules[name].__file__)) == folder:
        del sys.modules[name]


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config mistakes into one clear message, not a traceback."""
  spec = _flag_value(argv, "config")
  if spec is None:
    fail("error: --config is required, e.g. --config=configs/demo.py (--help lists the "
         "options)", argv)
  if not os.path.isfile(spec.partition(":")[0]):
    fail(f"error: config file {spec!r} does not exist (run from the repository root, "
         "configs are in configs/).", argv)
  try:
    config = load_config(spec)
  except ConfigFileError as e:
    fail(f"error: {e}", argv)
  argv = last_overrides(_without_flag(argv, "config"))
  try:
    config_flags.DEFINE_config_dict("config", config, "The experiment config (--config=FILE).",
                                    lock_config=True, sys_argv=argv)
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # an override of a key that the config does not have
    known = _all_keys(config)
    bad = [k for k in overridden_keys(argv) if k not in known] or [str(e)]
    hints = {k: difflib.get_close_matches(k, known, n=3) for k in bad}
    text = "; ".join(f"{k!r}" + (f" (did you mean {', '.join(hints[k])}?)" if hints[k] else "")
                     for k in bad)
    fail(f"error: unknown config key {text}. Valid keys are listed in vgssl_jax/config.py.", argv)
  except flags.Error as e:
    hint = ""
    if "tuple" in str(e).lower() or "could not parse" in str(e).lower():
      hint = (" (tuple settings are written with commas, e.g. "
              "--config.data.image_size=480,640)")
    fail(f"error: {e}{hint}", argv)


def checked_config(config, purpose: str = "train"):
  """The validated config (ConfigError otherwise) with its derived defaults resolved."""
  validate(config, purpose)
  return resolve(config)


def setup_logging(workdir: str | None) -> None:
  """INFO to stderr; also to <workdir>/info.log from process 0 (the only one that writes)."""
  import jax
  logs.setup(workdir, write_file=jax.process_index() == 0)
  tunables = os.environ.get("GLIBC_TUNABLES")
  logging.info("CPU malloc settings: %s", tunables or "glibc defaults (VGSSL_CPU_TUNING=0, "
               "user settings or an accelerator host)")


def check_workdir_path(workdir: str) -> None:
  """Exits with one line unless `workdir` is a folder this process can write, or can be
  created (nothing is created here: a probe folder is made and removed again)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    sys.exit(f"error: --workdir {workdir} is a file, not a folder: give a folder for the run's "
             "outputs (it is created if missing).")
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    if not os.path.isdir(existing):
      raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
    os.rmdir(tempfile.mkdtemp(prefix=".vgssl-write-test-", dir=existing))
  except OSError as e:
    where = "" if existing == os.path.abspath(workdir) else f" (in {existing})"
    sys.exit(f"error: cannot write to --workdir {workdir}{where}: {e.strerror or e}; choose a "
             "folder you can write to, or fix its permissions.")


def warn_ignored(config, keys: list[str], purpose: str) -> None:
  """One warning naming the command-line settings that this run does not use, and why."""
  ignored = ignored_overrides(config, keys, purpose)
  if ignored:
    logging.warning("settings without effect in this run: %s", "; ".join(
        f"{key} ({why})" for key, why in ignored.items()))


def run_main(argv: list[str], config_flag, workdir_flag, default_workdir, job,
             purpose: str = "train") -> None:
  """The body of an entry point's main(): workdir and logging, the checked config, then
  `job(config, workdir)`. Errors the user can fix end the process with one line on stderr,
  and every end (an error, a signal, a traceback) is also recorded in <workdir>/info.log."""
  if len(argv) > 1:
    fail(f"error: unexpected arguments {argv[1:]}")
  # our format from here on, also for what jax says while it starts (absl's until now)
  logs.setup(None)
  config = config_flag.value
  workdir = workdir_flag.value or default_workdir(config)
  check_workdir_path(workdir)
  try:
    sharding.initialize_distributed(config.distributed)
  except USER_ERRORS as e:
    fail(f"error: {e}")
  setup_logging(workdir)
  try:
    config = checked_config(config, purpose)
    warn_ignored(config, overridden_keys(sys.argv), purpose)
    compilation_cache.enable()
    job(config, workdir)
  except USER_ERRORS as e:
    logs.to_files(f"error: {e}")
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    interrupts.exit_now()
  except Exception:  # pylint: disable=broad-except
    # Python prints the traceback on stderr; the log must say why the run ended too
    logs.to_files("the run stopped with an unexpected error:\n" + traceback.format_exc())
    raise
