import json

import numpy as np
import pytest

from tests.conftest import run_python


@pytest.mark.parametrize("method", ["vicreg"])
def test_one_and_four_devices_give_the_same_step(method):
  proc = run_python(["-m", "tests.step_equivalence", method], devices=4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["devices"] == 4
  np.testing.assert_allclose(r["losses_4"], r["losses_1"], rtol=1e-4)
  assert r["max_param_diff"] < 1e-4 * max(1.0, r["max_param"]), r
  # three steps, one compilation each (no recompilation from weak types or shapes)
  assert r["compiles_1"] == 1 and r["compiles_4"] == 1
