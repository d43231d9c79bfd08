import json

import numpy as np
import pytest

from tests.conftest import run_python


# the cross-device parts: batch statistics of the loss (VICReg on the DeiT; Barlow Twins
# and SimCLR reduce over the batch the same way), the MoCo queue with its EMA key encoder
# (BYOL's target is the same per-element EMA), gathered negatives
# and the multi-similarity miner + loss, which must see every pair of the global batch
@pytest.mark.parametrize("method,extra", [
    ("mocov2", []), ("simclr", ["--negatives"]), ("vicreg", ["--deit"]), ("ms", [])],
    ids=lambda v: v if isinstance(v, str) else "-".join(a[2:] for a in v) or "plain")
def test_one_and_four_devices_give_the_same_step(method, extra):
  proc = run_python(["-m", "tests.step_equivalence", method, *extra], devices=4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["devices"] == 4
  # the first step: same loss and same updated state (params, BN statistics, EMA target,
  # MoCo queue) up to float32 reduction order
  np.testing.assert_allclose(r["losses_4"][0], r["losses_1"][0], rtol=1e-5, atol=1e-6)
  assert r["max_state_diff"] < 1e-5 * max(1.0, r["max_state"]), r
  # later steps start from states that differ by rounding only; the losses stay together
  np.testing.assert_allclose(r["losses_4"], r["losses_1"], rtol=1e-4, atol=1e-5)
  # three steps, one compilation each (no recompilation from weak types or shapes)
  assert r["compiles_1"] == 1 and r["compiles_4"] == 1
