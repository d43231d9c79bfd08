"""Reading the golden files of tests/data/golden (outputs of the original and official code).

Every size a test needs comes from the file itself: its `config` (a Python literal) or the
shapes of its arrays. Another set made by the same generators (other sizes, other seeds)
must pass unchanged: the files, not one draw of them, are the contract.
"""

from __future__ import annotations

import ast
import os
import re

import numpy as np

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden")


def load(name: str) -> dict:
  """{key: array} of tests/data/golden/<name>."""
  with np.load(os.path.join(GOLDEN, name)) as data:
    return {k: data[k] for k in data.files}


def config(g: dict, prefix: str = "") -> dict:
  """The generator's settings stored as `<prefix>config`."""
  return ast.literal_eval(str(g[prefix + "config"]))


def weights(g: dict, prefix: str = "w/") -> dict:
  """{state-dict key: array} of the weights stored under `prefix`."""
  return {k[len(prefix):]: v for k, v in g.items() if k.startswith(prefix)}


def block_count(state: dict, prefix: str) -> int:
  """How many numbered children `prefix`0, `prefix`1, ... the state dict has."""
  found = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)]
           if m}
  return max(found) + 1 if found else 0
