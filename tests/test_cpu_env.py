from vgssl_jax import cpu_env


def test_defaults_are_wanted_on_a_plain_cpu_host(monkeypatch):
  for var in ("VGSSL_CPU_TUNING", cpu_env.MARK, "GLIBC_TUNABLES", "JAX_PLATFORMS",
              "MALLOC_ARENA_MAX"):
    monkeypatch.delenv(var, raising=False)
  assert cpu_env.wanted() == {"GLIBC_TUNABLES": cpu_env.GLIBC_TUNABLES}


def test_user_settings_and_opt_out_win(monkeypatch):
  monkeypatch.delenv(cpu_env.MARK, raising=False)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setenv("VGSSL_CPU_TUNING", "0")
  assert cpu_env.wanted() == {}
  monkeypatch.setenv("VGSSL_CPU_TUNING", "1")
  monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
  assert cpu_env.wanted() == {}
  monkeypatch.delenv("MALLOC_ARENA_MAX")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert cpu_env.wanted() == {}
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv(cpu_env.MARK, "1")  # already re-executed once
  assert cpu_env.wanted() == {}
