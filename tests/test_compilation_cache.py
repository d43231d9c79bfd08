"""The persistent compilation cache: where it lives, how it is switched off, that it fills."""

import os
import subprocess
import sys

from vgssl_jax import compilation_cache as cc


def test_the_folder_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(cc.ENV_SWITCH, raising=False)
  monkeypatch.delenv(cc.ENV_DIR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cc.cache_dir() == str(tmp_path / "xdg" / "vgssl_jax" / "jax")
  monkeypatch.setenv(cc.ENV_DIR, str(tmp_path / "mine"))
  assert cc.cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(cc.ENV_SWITCH, "0")
  assert cc.cache_dir() is None and cc.enable() is None


def test_an_unwritable_folder_only_warns(monkeypatch, tmp_path, caplog):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.delenv(cc.ENV_SWITCH, raising=False)
  monkeypatch.setenv(cc.ENV_DIR, str(blocker / "cache"))
  assert cc.enable() is None
  assert "compilation cache off" in caplog.text and cc.ENV_DIR in caplog.text


def test_a_compiled_program_is_written_and_read_back(tmp_path):
  script = ("from vgssl_jax import compilation_cache as cc; import jax, jax.numpy as jnp; "
            "cc.enable(); jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
            "print(float(jax.jit(lambda x: (jnp.sin(x) @ x).sum())(jnp.ones((32, 32)))))")
  env = {**os.environ, cc.ENV_DIR: str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
  env.pop(cc.ENV_SWITCH, None)
  first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(os.listdir(tmp_path / "cache"))
  assert entries, "nothing was cached"
  second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True)
  assert second.returncode == 0 and second.stdout == first.stdout
  assert sorted(os.listdir(tmp_path / "cache")) == entries  # a hit writes nothing new
