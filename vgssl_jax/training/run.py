"""One training run (what `python -m vgssl_jax.main` does): datasets and model from the
config, the untrained model's scores, the loop, the trained model's scores.

The epoch source is chosen by the objective's registry entry (objectives.registry), so a
new stage plugs in here with its source class, not with another loop.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax

from vgssl_jax import data_config, resume, sharding
from vgssl_jax.evaluation import exports, runner
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.evaluation.loading import abstract_variables
from vgssl_jax.models import aggregations, backbones
from vgssl_jax.objectives import registry
from vgssl_jax.objectives.base import retrieval_variables
from vgssl_jax.training import initial_weights
from vgssl_jax.training.loop import Trainer
from vgssl_jax.training.sources import source_class


def check_mesh(config, mesh) -> None:
  items = source_class(config).steps_items(config)
  sharding.check_divisible(items, mesh, "train.batch_size" if items == config.train.batch_size
                           else "train.batch_size / 2 (items per step with pair_negative)")
  if config.train.grad_accum_steps > 1:
    sharding.check_divisible(items // config.train.grad_accum_steps, mesh,
                             "items per micro-batch (train.batch_size / train.grad_accum_steps)")


def tested_text(tested: dict) -> str:
  """How the printed table names the tested model."""
  if tested["selection"] == "last":
    return f"the last model (step {tested['step']}, no validation)"
  return f"the best validated checkpoint (step {tested['step']}, {tested['selection']})"


def run_init_run(config, workdir: str) -> None:
  """config.init_run (a whole stage-1 config), trained into <workdir>/init_run unless done,
  becomes this run's train.init_from (the stage-2 demo runs its chain in one command)."""
  sub = os.path.join(workdir, INIT_RUN)
  with config.unlocked():
    config.train.init_from = sub
    # one dataset for the whole chain: --config.data.root=... reaches the stage-1 run too
    for key in ("root", "name", "synthetic"):
      config.init_run.data[key] = config.data[key]
  resume.check_workdir(config, workdir)
  if os.path.exists(os.path.join(sub, "results.json")):
    logging.info("init_run: %s is trained already", sub)
    return
  logging.info("init_run: training the stage-1 model (method %s) into %s", config.init_run.method,
               sub)
  train_and_evaluate(config.init_run, sub)


INIT_RUN = "init_run"


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; writes {"before": ..., "after": ...} to results.json."""
  start = time.perf_counter()
  if config.init_run:
    run_init_run(config, workdir)
  objective = registry.build_objective(config)
  # wrong weights files are reported before anything is written
  abstract = abstract_variables(objective.model, config.data.image_size)
  if config.model.pretrained:
    backbones.check_pretrained(config.model, abstract, config.data.image_size)
  if config.train.init_from:
    initial_weights.check_init_from(config, abstract)
  frozen = backbones.frozen_modules(config.model)
  if frozen and not config.model.pretrained and not config.train.init_from:
    logging.warning("%s of the backbone do not learn and start from random weights (no "
                    "model.pretrained, no train.init_from): give the backbone's weights for a "
                    "real run", ", ".join(frozen[:4]) + (" ..." if len(frozen) > 4 else ""))
  resume.check_workdir(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  mesh = sharding.make_mesh(config.num_devices)
  check_mesh(config, mesh)
  logging.info("mesh: %d %s device(s) in %d process(es)", mesh.devices.size,
               jax.devices()[0].platform, jax.process_count())

  dc, tc = config.data, config.train
  source_cls = source_class(config)
  train_data = source_cls.open_train(config)
  val_places = data_config.open_split(config, dc.name, "val") if tc.val_every else None
  eval_sets = runner.open_eval_sets(config)

  embedder = Embedder.from_config(config, objective.model, mesh)
  source = source_cls(config, objective, train_data, embedder, workdir)
  validate = None
  options = runner.EvalOptions.from_config(config.eval).for_validation()
  if val_places is not None:
    def validate(state, rerank: bool = True):
      variables = retrieval_variables(state.params, state.batch_stats)
      return runner.evaluate_places(embedder, variables, val_places, options,
                                    rerank=options.reranker(embedder, variables) if rerank
                                    else None)
  # stage 2 selects on the re-ranked recall (train_reranker.py)
  selection = (f"{'reranked_' if options.rerank_top else ''}recall@"
               f"{config.eval.recall_values[config.train.save_best]}")
  trainer = Trainer(config, objective, mesh, source, workdir, validate, selection)

  def init_state():
    state = trainer.init_state()
    if config.model.pretrained:
      state = initial_weights.with_pretrained_backbone(state, config.model, config.data.image_size,
                                                       mesh)
    data_init = aggregations.spec(backbones.aggregation_name(config.model)).data_init
    if config.train.init_from:
      state = initial_weights.with_init_from(state, config, mesh)
    elif data_init:
      state = initial_weights.DATA_INITS[data_init](state, config, source.image_pool,
                                                    embedder, mesh)
    return state
  state, progress = trainer.resume_or_init(init_state)
  if validate is not None and options.rerank_top and int(state.step) == 0:
    # train_reranker.py's sanity check of the global model it starts from
    val = validate(state, rerank=False)
    logging.info("global-only validation before training: %s", " ".join(
        f"{k} {v:.1f}" for k, v in val.items() if k.startswith("recall@")))

  def evaluate(variables):
    return runner.evaluate_all(config, embedder, variables, eval_sets)

  results = {}
  before_path = os.path.join(workdir, "before.json")
  if config.eval.before:
    if os.path.exists(before_path):  # a resumed run: the untrained model was scored already
      with open(before_path) as f:
        results["before"] = json.load(f)
    else:
      results["before"] = evaluate(retrieval_variables(state.params, state.batch_stats))
      exports.write_json(before_path, results["before"])
  try:
    state = trainer.fit(state, progress)
    variables, tested = trainer.tested(state)
  finally:
    trainer.close()
  results["after"] = evaluate(variables)
  results["tested"] = tested
  results["seconds"] = time.perf_counter() - start
  exports.write_json(os.path.join(workdir, "results.json"), results)
  table = runner.format_table({k: results[k] for k in ("before", "after") if k in results},
                              tuple(config.eval.recall_values))
  print(f"\nRecall@N (%) on the {config.eval.split} split, {results['seconds']:.0f} s in all; "
        f"after = {tested_text(tested)}:\n{table}\nresults: "
        f"{os.path.join(workdir, 'results.json')}", flush=True)
  return results
