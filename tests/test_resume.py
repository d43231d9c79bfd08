"""Runs that survive: exact resume after SIGKILL, SIGTERM preemption, config changes,
divergence, multi-host, mixed precision and gradient accumulation."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO, run_python, tiny_overrides
from tests.test_main import assert_clean_error, main_args
from vgssl_jax.training.optimizer import epoch_lr

# 32 train queries, 8 pairs per step: 4 steps per epoch, 2 epochs
RUN = ["--config.train.queries_per_epoch=32", "--config.train.epochs=2",
       "--config.train.log_every=1", "--config.eval.before=False"]


def final_state(workdir):
  """Every array of the latest checkpoint's train state, as NumPy."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(read_only=True),
                               item_names=("state",))
  step = mngr.latest_step()
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return step, jax.tree.map(np.asarray, state)


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory):
  """An uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def popen(args, env_devices=1):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={env_devices}",
             JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def committed_steps(workdir):
  """Steps whose checkpoint folder was committed (orbax renames a finished temporary folder
  to the bare step number)."""
  names = [os.path.basename(os.path.dirname(p)) for p in
           glob.glob(os.path.join(workdir, "checkpoints", "*", "_CHECKPOINT_METADATA"))]
  return sorted(int(n) for n in names if n.isdigit())


class StderrWatch:
  """Collects a child's stderr in a thread, so that a test can wait for a line in it (a
  signal sent when the run prints "mining" lands before its first step, however fast the
  steps are) and read all of it at the end."""

  def __init__(self, proc):
    import threading
    self.proc, self.chunks = proc, []
    self.thread = threading.Thread(target=self._read, daemon=True)
    self.thread.start()

  def _read(self):
    # os.read returns whatever is there (a text stream's read(n) waits for n characters)
    fd = self.proc.stderr.fileno()
    for chunk in iter(lambda: os.read(fd, 4096), b""):
      self.chunks.append(chunk.decode(errors="replace"))

  @property
  def text(self) -> str:
    return "".join(self.chunks)

  def finish(self, timeout=240) -> str:
    self.proc.wait(timeout=timeout)
    self.thread.join(timeout=30)
    return self.text


def wait_for(condition, proc, timeout=240):
  start = time.time()
  while not condition():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() - start < timeout, "timed out"
    time.sleep(0.05)


def test_sigkill_then_resume_gives_bit_identical_parameters(tiny_root, tmp_path, reference):
  workdir = str(tmp_path / "killed")
  args = main_args(workdir, *tiny_overrides(tiny_root), *RUN, "--config.train.checkpoint_every=1")
  proc = popen(args)
  wait_for(lambda: any(s >= 2 for s in committed_steps(workdir)), proc)
  proc.send_signal(signal.SIGKILL)  # mid-run, possibly in the middle of a save
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = committed_steps(workdir)
  assert max(killed_at) < 8
  done = run_python(args)  # the same command resumes
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from" in done.stderr
  step, state = final_state(workdir)
  ref_step, ref_state = final_state(reference)
  assert step == ref_step == 8
  assert_bit_identical(state, ref_state)


def epoch_records(workdir):
  return [l for l in (json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl")))
          if "epoch_loss" in l]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes(tiny_root, tmp_path, reference, signum):
  """SIGTERM (preemption) and a first Ctrl-C: a checkpoint at the next step, a clean exit;
  the resumed run equals the uninterrupted one, its epoch records included (the running
  sums of the interrupted epoch are saved with the checkpoint)."""
  workdir = str(tmp_path / "preempted")
  args = main_args(workdir, *tiny_overrides(tiny_root), *RUN)
  proc = popen(args)
  watch = StderrWatch(proc)
  wait_for(lambda: "mining queries" in watch.text, proc)  # epoch 1, before its first step
  proc.send_signal(signum)
  stderr = watch.finish()
  assert proc.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
  name = signal.Signals(signum).name
  assert f"stopped by {name}" in stderr and "run the same command to resume" in stderr
  saved = committed_steps(workdir)
  assert saved == [1], saved  # mid-epoch 1 (4 steps per epoch): the running sums count
  assert f"stopped by {name}" in open(os.path.join(workdir, "info.log")).read()
  done = run_python(args)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_bit_identical(final_state(workdir)[1], final_state(reference)[1])
  assert epoch_records(workdir) == [
      {k: v for k, v in r.items()} for r in epoch_records(reference)]


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tiny_root, tmp_path):
  workdir = str(tmp_path / "interrupted")
  proc = popen(main_args(workdir, *tiny_overrides(tiny_root), *RUN))
  watch = StderrWatch(proc)
  wait_for(lambda: "mining queries" in watch.text, proc)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  stderr = watch.finish()
  assert "Traceback" not in stderr, stderr[-3000:]
  assert proc.returncode == 130 and "stopped at once" in stderr, stderr[-3000:]
  assert "stopped at once" in open(os.path.join(workdir, "info.log")).read()


def test_two_presses_during_one_long_call_stop_at_once(monkeypatch):
  """CPython runs a Python signal handler once for several signals that arrive while the
  main thread is inside one C call (here a long key derivation; in a run, a compilation):
  the presses are counted from the wakeup pipe, so the second still stops at once."""
  import hashlib
  import threading

  from vgssl_jax import interrupts
  from vgssl_jax.training import loop
  stops = []
  monkeypatch.setattr(interrupts, "exit_now", lambda message=None: stops.append(message))
  signals = loop._Signals()

  def press_twice():
    for _ in range(2):
      time.sleep(0.15)
      os.kill(os.getpid(), signal.SIGINT)
  with signals.installed():
    presser = threading.Thread(target=press_twice)
    presser.start()
    start = time.time()
    hashlib.pbkdf2_hmac("sha256", b"key", b"salt", 5_000_000)   # one C call of about a second
    assert time.time() - start > 0.4 and not presser.is_alive()   # both presses fell inside it
    presser.join()
  assert len(stops) == 1 and "Ctrl-C twice" in stops[0]


def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path):
  proc = popen(main_args(str(tmp_path / "early"), "--config.train.epochs=1"))
  time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
  assert "interrupted (Ctrl-C): stopped at once" in stderr


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes(tiny_root, tmp_path,
                                                                     reference):
  import shutil
  workdir = str(tmp_path / "damaged")
  shutil.copytree(reference, workdir)
  assert committed_steps(workdir) == [4, 8]
  for path in glob.glob(os.path.join(workdir, "checkpoints", "8", "state", "**", "d", "*"),
                        recursive=True):
    with open(path, "r+b") as f:  # array files cut short, as by a full disk
      f.truncate(max(os.path.getsize(path) // 3, 1))
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN,
                              "--config.train.epochs=3"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint 8 cannot be restored" in proc.stderr
  assert "resumes from checkpoint 4" in proc.stderr
  assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "8", "state"))  # kept
  assert final_state(workdir)[0] == 12
  # epoch 2 trained again from checkpoint 4: the same as the first time
  redone = [r for r in epoch_records(workdir) if r["epoch"] == 2]
  assert redone[-1] == epoch_records(reference)[1]


def test_no_restorable_checkpoint_is_an_error_that_moves_nothing(tiny_root, tmp_path, reference):
  import shutil
  workdir = str(tmp_path / "all_damaged")
  shutil.copytree(reference, workdir)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "state", "**", "d", "*"),
                        recursive=True):
    with open(path, "r+b") as f:
      f.truncate(1)
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN))
  assert_clean_error(proc, "no checkpoint of this run can be restored", "step 8", "step 4")
  assert committed_steps(workdir) == [4, 8] and not os.path.exists(
      os.path.join(workdir, "damaged_checkpoints"))


def test_orphaned_read_errors_of_a_failed_restore_are_not_echoed(caplog):
  """asyncio reports the unawaited reads of a failed restore with a traceback whenever it
  collects them; only those echoes are dropped, other asyncio errors still show."""
  import logging
  from vgssl_jax import logs
  logs.install_filters()  # the entry points' logging set-up
  log = logging.getLogger("asyncio")
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    log.error("Task exception was never retrieved\nfuture: <Task finished name='Task-7' "
              "coro=<async_deserialize() done>")
    log.error("Task exception was never retrieved\nfuture: <Task coro=<something_else()>")
  assert [r.getMessage().split("<Task")[-1] for r in caplog.records] == [" coro=<something_else()>"]


def test_resume_refuses_a_new_model_shape_and_allows_more_epochs(tiny_root, tmp_path, reference):
  import shutil
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN,
                              "--config.model.fc_output_dim=16"))
  assert_clean_error(proc, "another config", "changes the model shape", "model.fc_output_dim")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # nothing touched
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN, "--config.train.lr=0.5"))
  assert_clean_error(proc, "changes the experiment (train.lr: 0.001 -> 0.5)")
  assert "model shape" not in proc.stderr
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN,
                              "--config.train.epochs=3"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "changed settings train.epochs" in proc.stderr
  assert final_state(workdir)[0] == 12


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path):
  workdir = str(tmp_path / "nan")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *RUN, "--config.train.lr=1e30",
                              "--config.train.checkpoint_every=1"))
  assert_clean_error(proc, "the loss became nan at step")
  step = int(re.search(r"loss became nan at step (\d+)", proc.stderr).group(1))
  saved = committed_steps(workdir)
  assert saved and max(saved) == step - 1 and f"step {step - 1}" in proc.stderr
  _, state = final_state(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_two_hosts_train_like_one(tiny_root, tmp_path):
  """Two processes with 2 CPU devices each give the losses of one process with 4."""
  common = [*tiny_overrides(tiny_root), *RUN, "--config.train.epochs=1"]
  port = 20000 + os.getpid() % 20000
  procs = [popen(main_args(str(tmp_path / "two"), *common,
                           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                           "--config.distributed.num_processes=2",
                           f"--config.distributed.process_id={i}"), env_devices=2)
           for i in range(2)]
  one = run_python(main_args(str(tmp_path / "one"), *common), devices=4)
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
  assert one.returncode == 0, one.stderr[-3000:]
  def losses(workdir):
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return [l["loss"] for l in lines if "loss" in l]
  assert len(losses(str(tmp_path / "two"))) == 4
  np.testing.assert_allclose(losses(str(tmp_path / "two")), losses(str(tmp_path / "one")),
                             rtol=1e-5)


def test_lr_schedules_follow_the_original():
  assert epoch_lr(1e-3, 7, 10) == 1e-3
  # warm-up: lr * (0.1 (1 - a) + a), a = epoch / warmup
  assert epoch_lr(1.0, 0, 10, "cosine", 4) == pytest.approx(0.1)
  assert epoch_lr(1.0, 2, 10, "cosine", 4) == pytest.approx(0.55)
  # then lr * (1 + cos(pi * epoch / epochs)) / 2 (not shifted by the warm-up)
  assert epoch_lr(1.0, 5, 10, "cosine", 4) == pytest.approx(0.5)
  assert epoch_lr(1.0, 4, 10, "cosine", 4) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.4)))
