"""Images/s of the input pipeline: decode + resize to the model size.

  python benchmarks/input_pipeline.py --size 480x640 --threads 1,2,4 --processes 1,2

Writes --images JPEGs of 640x480 (synthetic street views) to a temporary folder, then
times in the same run:
  ours      the grain pipeline (vgssl_jax's loader) decoding in 1, 2, 4, ... threads of the
            process (data.num_workers=0, the default: PIL releases the GIL while decoding),
            and with 1, 2, ... worker processes (data.num_workers > 0). The evaluation
            pipeline by default (data.eval_resize=tensor: float32 out, the original's
            evaluation resize), and with one thread also its "pil" resize (uint8 out, the
            training images' resize) and JPEG draft decoding (data.jpeg_draft)
  original  the original's ways in one process: training, PIL open -> PIL bilinear resize
            with antialias -> float tensor -> ImageNet normalisation; evaluation, PIL open
            -> float tensor -> normalisation -> bilinear resize without antialias (numpy
            standing in for torch's tensor resize), per image
Per core, ours with one thread is compared with the original (one process). The original's
figure is the median of --repeats passes after a warm-up pass; ours is the steady state of
one pipeline over the images --repeats times after a warm-up pass (worker start-up, paid
once per epoch, excluded).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import common

if __name__ == "__main__":
  common.setup()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_pipelines import images, loader, synthetic  # noqa: E402
from vgssl_jax.models.inputs import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def write_images(folder: str, n: int) -> list[str]:
  cfg = synthetic.SyntheticConfig(image_size=(480, 640), streets=(1, 1, 1), street_length_m=400.0,
                                  queries_per_street=(0, 0, 0), db_spacing_m=400.0 / n)
  synthetic.generate_split(folder, "train", cfg)
  part = os.path.join(folder, "images", "train", "database")
  return sorted(os.path.join("images", "train", "database", p) for p in os.listdir(part))[:n]


def original_way(paths: list[str], size: tuple[int, int], evaluation: bool = False) -> None:
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  for path in paths:
    with Image.open(path) as im:
      im = im.convert("RGB")
      if not evaluation:
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    tensor = np.asarray(im, np.float32) / 255.0  # ToTensor
    tensor = (tensor - mean) / std  # Normalize
    if evaluation:  # the tensor resize after normalisation
      images.tensor_resize(tensor, size)


def ours(source, size, threads: int, processes: int, draft: bool, repeats: int,
         resize: str = "tensor") -> float:
  """Steady-state images/s of one long-lived pipeline (worker start-up excluded): the images
  `repeats` + 1 times over, the first pass being the warm-up."""
  options = loader.LoaderOptions(size, num_workers=processes, num_threads=threads,
                                 prefetch=max(4, threads), jpeg_draft=draft, eval_resize=resize)
  n, batch = len(source), 16
  indices = np.tile(np.arange(n), repeats + 1)
  iterator = iter(loader.image_dataset(source, indices, batch, options))  # {"views", "ok"}
  for _ in range(n // batch):  # warm-up pass
    next(iterator)
  start = time.perf_counter()
  count = sum(len(b["views"]) for b in iterator)
  return count / (time.perf_counter() - start)


def timed(fn, repeats: int) -> float:
  fn()  # warm-up: page cache, worker start-up code paths
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return common.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--images", type=int, default=256)
  p.add_argument("--size", default="480x640", help="training size HxW (224x224, 480x640, ...)")
  p.add_argument("--threads", default="1,2,4", help="decoding threads (data.num_workers=0)")
  p.add_argument("--processes", default="1,2", help="worker processes (data.num_workers)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  size = common.parse_size(a.size)
  with tempfile.TemporaryDirectory() as folder:
    paths = write_images(folder, a.images)
    source = images.FileImages(folder, tuple(paths))
    n = len(paths)
    full = [os.path.join(folder, q) for q in paths]
    original = n / timed(lambda: original_way(full, size), a.repeats)
    original_eval = n / timed(lambda: original_way(full, size, evaluation=True), a.repeats)
    by_threads = {t: ours(source, size, t, 0, False, a.repeats)
                  for t in [int(v) for v in a.threads.split(",")]}
    by_processes = {w: ours(source, size, 1, w, False, a.repeats)
                    for w in [int(v) for v in a.processes.split(",") if v]}
    pil = ours(source, size, 1, 0, False, a.repeats, "pil")
    pil_draft = ours(source, size, 1, 0, True, a.repeats, "pil")
  one = by_threads[min(by_threads)]
  result = {"images": n, "source_size": [480, 640], "size": list(size),
            "original_train_images_per_s": original, "original_eval_images_per_s": original_eval,
            "ours_tensor_images_per_s_by_threads": by_threads,
            "ours_tensor_images_per_s_by_processes": by_processes,
            "ours_pil_1_thread": pil, "ours_pil_1_thread_jpeg_draft": pil_draft,
            "speedup_per_core_eval": one / original_eval, "speedup_per_core_pil": pil / original}
  text = ", ".join(f"{t} thread{'s' if t > 1 else ''} {v:.0f}" for t, v in by_threads.items())
  text += "".join(f", {w} process{'es' if w > 1 else ''} {v:.0f}" for w, v in by_processes.items())
  common.report(f"input pipeline 640x480 JPEG -> {size[0]}x{size[1]}: ours, evaluation resize "
                f"(tensor, float32) {text} images/s, the original's evaluation way "
                f"{original_eval:.0f}: {one / original_eval:.2f}x per core; ours, PIL resize "
                f"(uint8) {pil:.0f} images/s ({pil_draft:.0f} with JPEG draft decoding), the "
                f"original's training way {original:.0f}: {pil / original:.2f}x per core",
                result, a.out)


if __name__ == "__main__":
  main()
