"""The GPU-relevant benchmarks in one go (about 5 minutes on one H200), as a Markdown table.

  python benchmarks/gpu.py --out gpu.json          # on a GPU host (pip install -e '.[cuda]')
  python benchmarks/gpu.py --smoke                 # tiny settings: checks the script on a CPU

Runs: the stage-1 step for resnet50conv5 at 480x640 with 64 pairs in float32 and bfloat16,
for VICReg (projector 2 x 4096) and SimCLR (1 x 1024); the evaluation forward (descriptors/s)
and the 20,000 x 1,000 search; the GeoPair mining search on the device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run(script: str, args: list[str], timeout: int) -> dict:
  with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
    out = f.name
  proc = subprocess.run([sys.executable, os.path.join(HERE, script), *args, "--out", out],
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
  print(proc.stdout.strip().splitlines()[-1], flush=True)
  with open(out) as f:
    return json.load(f)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  if a.smoke:
    net = ["--backbone", "resnet18conv4", "--width", "8", "--resolution", "64x96"]
    batch, eval_batch, mining = "8", "16", ["--queries", "500", "--database", "1000", "--pool",
                                            "100", "--loop-sample", "20"]
  else:
    net = ["--backbone", "resnet50conv5", "--resolution", "480x640"]
    batch, eval_batch, mining = "64", "256", ["--loop-sample", "200"]
  rows = []
  for method, head in (("vicreg", ["--n-layers", "2", "--projection-size", "4096"]),
                       ("simclr", ["--n-layers", "1", "--projection-size", "1024"])):
    for dtype in ("float32", "bfloat16"):
      r = run("train_step.py", [*net, "--batch", batch, "--method", method, *head, "--dtype",
                                dtype, "--steps", "10"], 300)
      setting = f"{method} step, {batch} pairs, {dtype}"
      rows.append((setting, "error: " + r["error"]) if "error" in r else
                  (setting, f"{r['ms_per_step']:.0f} ms/step, {r['pairs_per_s']:.0f} pairs/s, "
                            f"compile {r['compile_s']:.0f} s, peak device memory "
                            + (f"{r['peak_device_memory_mb']:.0f} MB"
                               if r.get("peak_device_memory_mb") else "n/a")))
  deit = (["--backbone", "deit", "--vit", "48,2,2", "--resolution", "64x96"] if a.smoke else
          ["--backbone", "deit", "--resolution", "480x640"])
  deit_batch = "8" if a.smoke else "32"
  for dtype in ("float32", "bfloat16"):  # DeiT-S, the original's 32 pairs at 480x640
    r = run("train_step.py", [*deit, "--batch", deit_batch, "--fc-output-dim", "256",
                              "--n-layers", "2", "--projection-size", "4096", "--dtype", dtype,
                              "--steps", "10"], 300)
    setting = f"DeiT-S VICReg step, {deit_batch} pairs, {dtype}"
    rows.append((setting, "error: " + r["error"]) if "error" in r else
                (setting, f"{r['ms_per_step']:.0f} ms/step, {r['pairs_per_s']:.0f} pairs/s"))
  for dtype in ("float32", "bfloat16"):
    r = run("evaluate.py", [*net, "--batch", eval_batch, "--dtype", dtype, "--no-train-step"], 300)
    rows.append((f"evaluation forward + search, {dtype}", "error: " + r["error"] if "error" in r
                 else f"{r['descriptors_per_s']:.0f} descriptors/s; search 20k x 1k "
                      f"{r['search_seconds']['device']:.3f} s (faiss {r['search_seconds']['faiss']:.3f} s)"))
  r = run("mining.py", mining, 300)
  rows.append(("mining search (10k queries)", "error: " + r["error"] if "error" in r else
               f"partial epoch {r['partial_epoch_seconds']['device']:.2f} s "
               f"({r['speedup_partial_epoch_vs_loop']:.0f}x the per-query loop), full "
               f"{r['seconds']['full']['device']:.2f} s"))
  table = "| benchmark | result |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
  print("\n" + table, flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
