"""Stage-1 training: train state, the jitted step, the epoch loop (mining -> steps -> validation)."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from data_pipelines import augment, loader, mining
from data_pipelines.places import PlaceDataset, TrainPlaces
from vgssl_jax import checkpoints, evaluation, parallel
from vgssl_jax.inference import Embedder
from vgssl_jax.methods import Method, descriptor_variables
from vgssl_jax.progress import Progress


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (jit, shard, checkpoint)."""
  step: jax.Array          # int32 scalar
  params: Any              # {"net": ..., ["predictor": ...]}
  batch_stats: Any
  opt_state: Any
  method_state: Any        # EMA target, MoCo queue, ... ({} for VICReg)
  rng: jax.Array           # uint32[2]; the step's key is fold_in(rng, step)


def make_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam as the original (betas 0.9/0.999, eps 1e-8, no weight decay), constant lr."""
  return optax.adam(lr)


def create_train_state(method: Method, tx: optax.GradientTransformation, seed: int,
                       image_size, mesh: Mesh) -> TrainState:
  """Initialises the state directly replicated on the mesh."""
  def init():
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)
    params, batch_stats, method_state = method.init(init_key, image_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), method_state=method_state, rng=rng)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def make_views(key: jax.Array, batch: dict, random_resized_crop: float, horizontal_flip: bool,
               dtype) -> tuple[jax.Array, jax.Array]:
  """uint8 batch -> the two normalised views (spec §3.3-§3.5).

  view 1 = [T_q(queries); T_q(negatives)], view 2 = [positives; T_q'(negatives)]: the query
  and both negative views get independent random query transforms, the positive none.
  Then the whole step is mirrored or not (one coin for all images).
  """
  k_query, k_neg1, k_neg2, k_flip = jax.random.split(key, 4)
  view1 = [augment.query_transform(k_query, batch["query"], random_resized_crop)]
  view2 = [batch["positive"].astype(jnp.float32)]
  if "negative" in batch:
    view1.append(augment.query_transform(k_neg1, batch["negative"], random_resized_crop))
    view2.append(augment.query_transform(k_neg2, batch["negative"], random_resized_crop))
  view1, view2 = jnp.concatenate(view1), jnp.concatenate(view2)
  if horizontal_flip:
    view1, view2 = augment.batch_flip(k_flip, [view1, view2])
  return augment.normalize(view1, dtype), augment.normalize(view2, dtype)


def train_step(state: TrainState, batch: dict, *, method: Method,
               tx: optax.GradientTransformation, random_resized_crop: float,
               horizontal_flip: bool) -> tuple[TrainState, dict]:
  """One optimizer step: views -> loss and gradients -> Adam; method state after (EMA)."""
  key = jax.random.fold_in(state.rng, state.step)
  view1, view2 = make_views(key, batch, random_resized_crop, horizontal_flip, method.model.dtype)

  def loss_fn(params):
    return method.loss(params, state.batch_stats, state.method_state, view1, view2)

  (loss, (batch_stats, method_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  method_state = method.after_update(method_state, state.params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, method_state=method_state)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def jit_train_step(method: Method, tx: optax.GradientTransformation, mesh: Mesh,
                   random_resized_crop: float, horizontal_flip: bool):
  """The sharded, jitted step: state replicated, batch sharded over "data", state donated."""
  step = functools.partial(train_step, method=method, tx=tx,
                           random_resized_crop=random_resized_crop,
                           horizontal_flip=horizontal_flip)
  return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                 donate_argnums=0)


def mining_config(config) -> mining.MiningConfig:
  tc = config.train
  return mining.MiningConfig(tc.queries_per_epoch, tc.mining, tc.neg_samples_num,
                             tc.negs_num_per_query, tc.pair_negative)


def items_per_step(config) -> int:
  """Dataset items per step: with attached negatives each item gives two pairs, so the
  original halves the item batch and a step keeps train.batch_size pairs (spec §3.3)."""
  tc = config.train
  halve = tc.pair_negative and tc.neg_samples_num > 0
  return tc.batch_size // 2 if halve else tc.batch_size


class Trainer:
  """The stage-1 loop: per epoch GeoPair mining, then the steps; validation every N epochs."""

  def __init__(self, config, method: Method, mesh: Mesh, train_places: TrainPlaces,
               workdir: str, embedder: Embedder, val_places: PlaceDataset | None = None):
    self.config, self.method, self.mesh = config, method, mesh
    self.train_places, self.val_places = train_places, val_places
    self.workdir, self.embedder = workdir, embedder
    tc = config.train
    self.tx = make_optimizer(tc.lr)
    self.step_fn = jit_train_step(method, self.tx, mesh, tc.random_resized_crop,
                                  tc.horizontal_flip)
    self.options = loader.LoaderOptions(tuple(config.data.image_size), config.data.num_workers,
                                        config.data.num_threads)
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.mining = mining_config(config)
    self.items_per_step = items_per_step(config)

  def init_state(self) -> TrainState:
    return create_train_state(self.method, self.tx, self.config.seed,
                              tuple(self.config.data.image_size), self.mesh)

  def _log(self, record: dict) -> None:
    if jax.process_index() == 0:
      with open(self.metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def mine(self, state: TrainState, epoch: int) -> mining.GeoPairs:
    """This epoch's GeoPairs, mined with the current model (eval mode, projector output)."""
    places = self.train_places.places
    variables = descriptor_variables(state.params, state.batch_stats)

    def embed(part, indices):
      return self.embedder(variables, places.images(part), indices, output="projection",
                           desc=f"mining {part}")
    rng = np.random.default_rng([self.config.seed, epoch])
    return mining.compute_pairs(self.train_places, embed, rng, self.mining)

  def train_epoch(self, state: TrainState, epoch: int) -> tuple[TrainState, dict]:
    tc = self.config.train
    pairs = self.mine(state, epoch)
    places = self.train_places.places
    plan = loader.plan_epoch(pairs, places.num_queries, self.items_per_step, self.config.seed,
                             epoch)
    items = loader.local_items(plan, jax.process_index(), jax.process_count())
    local_batch = self.items_per_step // jax.process_count()
    batches = loader.pair_dataset(places, items, local_batch, self.options)
    steps = len(plan)
    losses, skipped = [], 0
    start = time.perf_counter()
    bar = Progress(batches, total=steps, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step")
    for batch in bar:
      skipped += int(batch.pop("skipped").sum())
      state, metrics = self.step_fn(state, parallel.shard_batch(batch, self.mesh))
      losses.append(metrics["loss"])  # fetched at the end: no host sync inside the loop
      if len(losses) % 10 == 0:
        bar.set_postfix(f"loss {float(losses[-1]):.4f}")
    losses = np.asarray(jax.device_get(losses), np.float64)
    if not np.all(np.isfinite(losses)):
      bad = int(np.argmin(np.isfinite(losses)))
      raise FloatingPointError(f"loss became {losses[bad]} at epoch {epoch + 1}, step {bad + 1} "
                               "of the epoch; lower train.lr or check the data.")
    seconds = time.perf_counter() - start
    record = {"epoch": epoch + 1, "step": int(state.step), "loss": float(losses.mean()),
              "seconds": seconds, "pairs_per_s": steps * tc.batch_size / seconds,
              "skipped_images": skipped}
    if skipped:
      logging.warning("epoch %d: %d unreadable training images were skipped (listed above)",
                      epoch + 1, skipped)
    self._log(record)
    return state, record

  def validate(self, state: TrainState) -> dict:
    """Recall@N on the val split (hard resize, as the original's validation)."""
    ec = self.config.eval
    options = evaluation.EvalOptions(ec.positive_radius, tuple(ec.recall_values), ec.backend)
    return evaluation.evaluate_places(
        self.embedder, descriptor_variables(state.params, state.batch_stats), self.val_places,
        options)

  def fit(self, state: TrainState) -> TrainState:
    """All epochs; a checkpoint after each validation and at the end (last N + best R@5)."""
    tc = self.config.train
    mngr = checkpoints.manager(os.path.join(self.workdir, "checkpoints"), tc.keep_checkpoints)
    for epoch in range(tc.epochs):
      state, record = self.train_epoch(state, epoch)
      logging.info("epoch %d/%d: loss %.4f, %.1f pairs/s", epoch + 1, tc.epochs, record["loss"],
                   record["pairs_per_s"])
      metrics = None
      if self.val_places is not None and tc.val_every and (epoch + 1) % tc.val_every == 0:
        val = self.validate(state)
        metrics = {f"val/{k}": v for k, v in val.items() if k.startswith(("recall@", "map@"))}
        self._log({"epoch": epoch + 1, "step": int(state.step), **metrics})
        logging.info("epoch %d validation: R@1 %.1f R@5 %.1f", epoch + 1, val["recall@1"],
                     val["recall@5"])
      if metrics is not None or epoch + 1 == tc.epochs:
        checkpoints.save(mngr, int(state.step), state,
                         checkpoints.meta_for(self.config, epoch + 1, metrics), metrics)
    mngr.wait_until_finished()
    mngr.close()
    return state
