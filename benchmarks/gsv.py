r"""The GSV-Cities recipes' host and loss costs, side by side with the official code:

  python benchmarks/gsv.py --part pipeline --compare-torch --torch-python <python with torch> \
      --gsv-src <amaralibey/gsv-cities checkout>
  python benchmarks/gsv.py --part loss --compare-torch --torch-python <python with torch>

pipeline: P x K batches at 224x224 (RandAugment(3), bilinear resize) from a synthetic
  GSV-Cities folder of 640x480 JPEGs (written once to --folder): our grain pipeline
  (data_pipelines.loader.place_dataset, uint8 out, normalised on the device) with 1 and 2
  decoding threads, against gsv-cities' own GSVCitiesDataset in a torch DataLoader with the
  recipes' transforms (float tensors out) with 0 and 2 workers. images/s; "per core" = 1
  thread / 0 workers.
loss: the multi-similarity miner + loss, forward and backward, on a batch of --places x 4
  descriptors of --dim (SALAD: 60 x 4 = 240 rows of 8448): ours jitted on the device
  (objectives.multi_similarity) against pytorch-metric-learning's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common

common.setup()

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines import gsv_cities, loader, synthetic_gsv  # noqa: E402
from vgssl_jax.objectives import multi_similarity  # noqa: E402
from vgssl_jax.training import place_batches  # noqa: E402

WORLD = synthetic_gsv.SyntheticGSVConfig(image_size=(480, 640), streets_per_city=1,
                                         street_length_m=240.0)


def torch_side(a, part: str, **extra) -> dict:
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_gsv.py")
  args = [a.torch_python, script, "--part", part, "--places", str(a.places),
          "--repeats", str(a.repeats)] + [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
  out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def pipeline(a) -> tuple[str, dict]:
  folder = synthetic_gsv.ensure_world(a.folder, cfg=WORLD)
  data = gsv_cities.load_gsv_cities(folder)
  augment = loader.Augment((224, 224), "bilinear", 3, 9)

  def ours(threads: int, draft: bool = False) -> float:
    options = loader.LoaderOptions((224, 224), num_threads=threads, prefetch=max(4, threads),
                                   jpeg_draft=draft)
    rows = place_batches.plan_items(data, a.places, 4, 0, 0).reshape(-1, 6)
    it = iter(loader.place_dataset(data.images(), np.tile(rows, (a.repeats + 1, 1)), a.places,
                                   augment, 0, 0, options))
    for _ in range(len(rows) // a.places):  # warm-up pass
      next(it)
    start = time.perf_counter()
    count = sum(b["images"].shape[0] * b["images"].shape[1] for b in it)
    return count / (time.perf_counter() - start)
  result = {"places": data.num_places, "images": len(data.paths),
            "ours_1_thread": ours(1), "ours_2_threads": ours(2),
            "ours_1_thread_jpeg_draft": ours(1, True)}
  summary = (f"P x K pipeline 640x480 JPEG -> 224x224 + RandAugment(3): ours "
             f"{result['ours_1_thread']:.0f} images/s with 1 thread "
             f"({result['ours_2_threads']:.0f} with 2; "
             f"{result['ours_1_thread_jpeg_draft']:.0f} with JPEG draft decoding)")
  if a.compare_torch:
    for workers in (0, 2):
      r = torch_side(a, "pipeline", folder=folder, gsv_src=a.gsv_src, workers=workers)
      result[f"torch_{workers}_workers"] = r["items"] / common.median(r["seconds"])
    result["per_core_ratio"] = result["ours_1_thread"] / result["torch_0_workers"]
    summary += (f"; gsv-cities' Dataset + DataLoader {result['torch_0_workers']:.0f} images/s "
                f"(0 workers; {result['torch_2_workers']:.0f} with 2): "
                f"{result['per_core_ratio']:.2f}x per core")
  return summary, result


def loss(a) -> tuple[str, dict]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(a.places * 4, a.dim)).astype(np.float32))
  labels = jnp.repeat(jnp.arange(a.places), 4)
  fn = jax.jit(jax.value_and_grad(lambda v: multi_similarity.ms_loss(v, labels)[0]))
  t = time.perf_counter()
  jax.block_until_ready(fn(x))
  compile_s = time.perf_counter() - t
  for _ in range(3):
    jax.block_until_ready(fn(x))
  times = []
  for _ in range(a.repeats * 5):
    t = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t)
  ms = 1000 * common.median(times)
  result = {"rows": a.places * 4, "dim": a.dim, "ours_ms": ms, "compile_s": compile_s,
            "loss": float(fn(x)[0])}
  summary = (f"MS miner + loss, forward + backward, {a.places * 4} x {a.dim}: ours {ms:.1f} ms "
             f"(compile {compile_s:.1f} s)")
  if a.compare_torch:
    r = torch_side(a, "loss", dim=a.dim)
    result.update(torch_ms=1000 * common.median(r["seconds"]), torch_loss=r["loss"])
    result["speedup"] = result["torch_ms"] / ms
    summary += (f"; pytorch-metric-learning {result['torch_ms']:.1f} ms: {result['speedup']:.1f}x "
                f"(losses {result['loss']:.5f} / {r['loss']:.5f})")
  return summary, result


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--part", choices=["pipeline", "loss"], required=True)
  p.add_argument("--places", type=int, default=None, help="P (pipeline 8, loss 60)")
  p.add_argument("--dim", type=int, default=8448)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--folder", default="/tmp/vgssl_gsv_bench", help="where the world is written")
  p.add_argument("--compare-torch", action="store_true")
  p.add_argument("--torch-python", default=sys.executable)
  p.add_argument("--gsv-src", default="", help="gsv-cities checkout (pipeline comparison)")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  a.places = a.places or (8 if a.part == "pipeline" else 60)
  if a.part == "pipeline" and a.compare_torch and not a.gsv_src:
    p.error("--compare-torch with --part pipeline needs --gsv-src")
  summary, result = (pipeline if a.part == "pipeline" else loss)(a)
  common.report(summary, result, a.out)


if __name__ == "__main__":
  main()
