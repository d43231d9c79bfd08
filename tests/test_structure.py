"""The package's shape: one direction of imports, host-only data pipelines, the set-up
scripts' argument handling."""

import ast
import os
import subprocess
import sys

from tests.conftest import REPO

PACKAGES = ("vgssl_jax", "data_pipelines")


def module_imports() -> dict[str, set[str]]:
  """{module: the package modules it imports (at module level or in functions)}."""
  graph = {}
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(REPO, package)):
      for name in names:
        if not name.endswith(".py"):
          continue
        path = os.path.join(folder, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        tree = ast.parse(open(path).read(), path)
        found = set()
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
          elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        graph[module] = {m for m in found if m.split(".")[0] in PACKAGES}
  return graph


def test_data_pipelines_never_imports_vgssl_jax_nor_device_code():
  graph = module_imports()
  for module, imports in graph.items():
    if module.startswith("data_pipelines"):
      assert not any(m.startswith("vgssl_jax") for m in imports), module
      base = os.path.join(REPO, *module.split("."))
      source = open(base + ("/__init__.py" if os.path.isdir(base) else ".py")).read()
      assert "import jax" not in source and "from jax" not in source, module


def test_module_imports_have_no_cycle():
  graph = module_imports()
  modules = set(graph)
  edges = {m: {i for i in imports if i in modules and i != m} for m, imports in graph.items()}
  state = {}

  def visit(m, path):
    state[m] = "open"
    for n in edges[m]:
      if state.get(n) == "open":
        raise AssertionError("import cycle: " + " -> ".join(path + [m, n]))
      if n not in state:
        visit(n, path + [m])
    state[m] = "done"
  for m in sorted(modules):
    if m not in state:
      visit(m, [])


def test_demo_script_passes_its_arguments_to_the_command_not_to_the_install():
  """`./scripts/demo.sh --config.method=simclr` (documented): the argument must reach the
  training command, not pip as an extra (the dry run prints what would be installed)."""
  env = dict(os.environ, VGSSL_VENV=sys.prefix, VGSSL_SETUP_DRY_RUN="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", "scripts/demo.sh", "--config.method=simclr", "--help"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--config.method" not in "".join(l for l in proc.stderr.splitlines()
                                          if l.startswith("setup:"))
  assert "python -m vgssl_jax.main" in proc.stdout and "--workdir=DIR" in proc.stdout


def test_install_stamps_of_the_demo_and_the_tests_stand_side_by_side(tmp_path):
  """Alternating demo.sh and test.sh must not reinstall each time: each extra set has its
  own stamp, and one set's install leaves the other's stamp alone."""
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  pip_log = tmp_path / "pip.log"
  # a stand-in python whose `-m pip install` only records its arguments
  script = venv / "bin" / "python"
  script.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$@" >> {pip_log}; exit 0; fi
exec {sys.executable} "$@"
""")
  script.chmod(0o755)

  def setup(extras):
    env = dict(os.environ, VGSSL_VENV=str(venv), VGSSL_EXTRAS=extras)
    proc = subprocess.run(["bash", "-c", "source scripts/env.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
  for extras in ("", "test", "", "test"):
    setup(extras)
  installs = pip_log.read_text().splitlines()
  assert len(installs) == 2, installs  # once per extra set, not four times
  stamps = sorted(n for n in os.listdir(venv) if n.startswith(".installed-"))
  assert [s.split("-")[1] for s in stamps] == ["base", "test"]


def floors_of_the_design() -> list[tuple[str, int]]:
  """(module prefix, floor) from docs/design.md's table of floors."""
  import re
  text = open(os.path.join(REPO, "docs", "design.md")).read()
  table = text[text.index("| floor | modules |"):].split("\n\n")[0]
  out = []
  for line in table.splitlines()[2:]:
    floor, modules = [c.strip() for c in line.strip("|").split("|")]
    out += [(m, int(floor)) for m in re.findall(r"`([\w.]+)`", modules)]
  return out


def floor_of(module: str, floors) -> int | None:
  best = None
  for prefix, floor in floors:
    if module == prefix or module.startswith(prefix + "."):
      if best is None or len(prefix) > len(best[0]):
        best = (prefix, floor)
  return best[1] if best else None


def test_imports_follow_the_floors_of_the_design():
  """Every module has a floor in docs/design.md, and imports only its own floor or below."""
  floors = floors_of_the_design()
  graph = module_imports()
  unplaced = [m for m in graph if floor_of(m, floors) is None and graph[m]]  # (empty __init__s)
  assert not unplaced, f"modules without a floor in docs/design.md: {unplaced}"
  upward = [f"{m} (floor {floor_of(m, floors)}) imports {i} (floor {floor_of(i, floors)})"
            for m, imports in graph.items() if graph[m] for i in imports
            if floor_of(i, floors) is not None and floor_of(i, floors) > floor_of(m, floors)]
  assert not upward, upward


def test_the_config_schema_is_a_leaf():
  imports = module_imports()["vgssl_jax.config"]
  assert not [m for m in imports if m.startswith("vgssl_jax")], imports


def test_no_module_outside_a_component_tests_its_name():
  """Comparisons with a backbone, aggregation or method name only in the registries and
  the components' own modules."""
  from vgssl_jax.models import aggregations, backbones
  from vgssl_jax.objectives import registry
  names = set(aggregations.AGGREGATIONS) | set(registry.OBJECTIVES) | {
      f.name for f in backbones.FAMILIES} | {"resnet18conv4", "resnet50conv5", "deit"}
  own = ("vgssl_jax/models/", "vgssl_jax/objectives/")
  found = []
  for folder, _, files in os.walk(os.path.join(REPO, "vgssl_jax")):
    for name in files:
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, REPO)
      if not name.endswith(".py") or rel.startswith(own):
        continue
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Compare):
          constants = [n.value for n in [node.left, *node.comparators]
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
          found += [f"{rel}:{node.lineno} {c!r}" for c in constants if c in names]
  assert not found, found
