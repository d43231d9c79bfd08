"""Stage 2 beyond the golden files: the hard-negative lists and the global mining modes by
hand, the precompute file's staleness checks, bad settings, and the whole chain (stage 1,
precompute, re-rank training with the global model frozen, re-ranked evaluation) on the tiny
synthetic dataset."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import mining
from tests.conftest import run_python, tiny_overrides
from tests.test_evaluate import eval_args
from tests.test_main import assert_clean_error, main_args
from tests.test_resume import final_state
from tests.test_search_mining import recording_embed, toy_train
from vgssl_jax.checks import validate
from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError
from vgssl_jax.evaluation import search
from vgssl_jax.training import hard_negatives


def test_hard_negative_lists_drop_soft_positives_keeping_the_order():
  train, _, _, _ = toy_train(num_db=40, num_q=3)
  soft = train.soft_positives
  ranked = np.array([list(soft[0][:2]) + [30, 31] + list(soft[0][2:4]) + [32]] * 1)
  ranked = np.concatenate([ranked, np.tile(np.arange(7), (2, 1))])
  got = mining.hard_negative_lists(ranked, soft, keep=5)
  want = []
  for r, row in enumerate(ranked):
    kept = [int(d) for d in row if d not in set(soft[r].tolist())][:5]
    want.append(kept + [-1] * (5 - len(kept)))
  np.testing.assert_array_equal(got, want)
  assert list(got[0][:3]) == [30, 31, 32] and list(got[0][3:]) == [-1, -1]


def test_global_negatives_come_from_the_first_hardness_and_never_the_padding():
  lists = np.array([[5, 6, 7, -1, -1, 9], [1, -1, 2, 3, 4, 8]])
  rng = np.random.default_rng(0)
  seen = [set(), set()]
  for _ in range(200):
    out = mining.global_negatives(rng, lists, 2, 4, np.array([10, 11]))
    assert all(len(set(row)) == 2 for row in out.tolist())
    for i, row in enumerate(out.tolist()):
      seen[i] |= set(row)
  assert seen == [{5, 6, 7}, {1, 2, 3}]   # the pads (-1) and entries past hardness never drawn
  with pytest.raises(ValueError, match="training query 10 has 3 precomputed hard negatives"):
    mining.global_negatives(rng, lists, 4, 4, np.array([10, 11]))


@pytest.mark.parametrize("mode", ["global", "global_combine"])
def test_global_mining_modes(mode):
  train, feats, _, _ = toy_train(num_db=120, num_q=40)
  q = feats["queries"][train.query_ids]
  _, ranked = search.device_dot_topk(q, feats["database"], 60)
  lists = mining.hard_negative_lists(ranked, train.soft_positives, keep=50)
  config = mining.TripletMiningConfig(12, mode, neg_samples_num=30, negs_num_per_query=4,
                                      neg_hardness=10)
  t = mining.compute_triplets(train, recording_embed(feats, []), np.random.default_rng(3),
                              config, search, hard_lists=lists)
  rows = {int(qid): r for r, qid in enumerate(train.query_ids)}
  n_global = 4 if mode == "global" else 2
  for qid, negs in zip(t.queries, t.negatives):
    first = set(lists[rows[int(qid)], :10].tolist())
    assert set(negs[:n_global].tolist()) <= first
    assert not set(negs.tolist()) & set(train.soft_positives[rows[int(qid)]].tolist())
  if mode == "global_combine":
    # the other half is partial mining's: the nearest of one random pool
    rng = np.random.default_rng(3)
    mining.sample_queries(rng, len(train.query_ids), 12)
    pool = np.sort(rng.choice(120, 30, replace=False))
    for qid, negs in zip(t.queries, t.negatives):
      soft = set(train.soft_positives[rows[int(qid)]].tolist())
      cand = np.array([p for p in pool if p not in soft])
      d = ((feats["database"][cand].astype(np.float64) - feats["queries"][qid]) ** 2).sum(1)
      np.testing.assert_array_equal(negs[2:], cand[np.argsort(d, kind="stable")[:2]])
  with pytest.raises(ValueError, match="needs the precomputed hard negatives"):
    mining.compute_triplets(train, recording_embed(feats, []), np.random.default_rng(3),
                            config, search)


def test_device_top_k_equals_float64_numpy_in_chunks():
  rng = np.random.default_rng(0)
  q, db = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(90, 8)).astype(np.float32)
  scores, ids = search.device_dot_topk(q, db, 11, chunk=8)
  want = np.argsort(-(q.astype(np.float64) @ db.T.astype(np.float64)), axis=1, kind="stable")
  np.testing.assert_array_equal(ids, want[:, :11])
  np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, want[:, :11], 1), rtol=1e-5)


def test_host_top_k_orders_ties_as_lax_top_k():
  # equal scores (duplicate database images) by ascending index, as lax.top_k does
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 6, size=(9, 40)).astype(np.float32)
  values, ids = search.host_topk(scores, 12)
  want_values, want_ids = jax.lax.top_k(jnp.asarray(scores), 12)
  np.testing.assert_array_equal(values, np.asarray(want_values))
  # a tie across the 12th place may keep either index; above it the order is fixed
  last = values[:, -1:]
  np.testing.assert_array_equal(np.where(values > last, ids, -1),
                                np.where(np.asarray(want_values) > last, np.asarray(want_ids), -1))


def test_a_stale_precompute_file_is_refused(tmp_path):
  train, _, _, _ = toy_train(num_db=40, num_q=10)
  path = str(tmp_path / hard_negatives.FILE)
  meta = {**hard_negatives.dataset_identity(train), "model": "abc"}
  np.savez(path, lists=np.zeros((10, 200), np.int64), meta=json.dumps(meta))
  assert hard_negatives.load(path, train, "abc").shape == (10, 200)
  with pytest.raises(ConfigError, match="ranked by another model"):
    hard_negatives.load(path, train, "other")
  other, _, _, _ = toy_train(num_db=41, num_q=10)
  with pytest.raises(ConfigError, match="it is stale"):
    hard_negatives.load(path, other, None)
  for row, value in ((3, 40), (7, -5)):   # an edited list: indices out of the database's range
    lists = np.zeros((10, 200), np.int64)
    lists[row, 5] = value
    np.savez(path, lists=lists, meta=json.dumps(meta))
    with pytest.raises(ConfigError, match=f"entry {value} in row {row}; expected 10 rows of "
                       "database indices 0..39, -1 for padding"):
      hard_negatives.load(path, train, None)
  with open(path, "wb") as f:
    f.write(b"not a file of ours")
  with pytest.raises(ConfigError, match="not a hard-negative list written by vgssl_jax"):
    hard_negatives.load(path, train, None)


def rerank_config(**model):
  c = base_config()
  c.method, c.eval.rerank_top = "r2former", 10
  c.model.update(dict(backbone="resnet18conv5", local_dim=8, num_local=6, n_layers=0))
  c.model.update(model)
  c.train.mining, c.train.negs_num_per_query = "global", 1
  c.rerank.random_global = True  # these checks are about other settings
  return c


def test_rerank_training_needs_a_trained_global_model_or_an_explicit_opt_in():
  c = rerank_config()
  c.rerank.random_global = False
  with pytest.raises(ConfigError, match="set --config.train.init_from=.* or --config.rerank."
                     "random_global=True"):
    validate(c)
  validate(c, "evaluate")  # evaluating a stage-2 model needs neither
  c.train.init_from = "runs/stage1"
  validate(c)
  c.eval.rerank_top = 0   # global recall only: refused for training, fine for an evaluation
  with pytest.raises(ConfigError, match="selects models on the re-ranked recall"):
    validate(c)
  validate(c, "evaluate")


@pytest.mark.parametrize("change,fragment", [
    (dict(backbone="resnet18conv4"), "local tokens (re-ranking) need model.backbone=deit"),
    (dict(aggregation="netvlad"), "model.aggregation=netvlad"),
    (dict(local_dim=0), "method=r2former trains the re-ranking network"),
])
def test_models_without_local_tokens_are_refused(change, fragment):
  validate(rerank_config())
  with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
    validate(rerank_config(**change))


def test_bad_rerank_settings_are_clear_errors():
  cases = [({"eval.rerank_top": 0}, "selects models on the re-ranked recall"),
           ({"rerank.loss": "hinge"}, "rerank.loss"), ({"rerank.fix": 2}, "rerank.fix"),
           ({"rerank.neg_hardness": 300}, "exceeds the 200 hard negatives"),
           ({"train.negs_num_per_query": 5, "rerank.neg_hardness": 3}, "is smaller than"),
           ({"rerank.hard_negatives": "/nowhere.npz"}, "is not a file")]
  for change, fragment in cases:
    c = rerank_config()
    for key, value in change.items():
      section, name = key.split(".")
      c[section][name] = value
    with pytest.raises(ConfigError, match=fragment):
      validate(c)
  c = base_config()
  c.eval.rerank_top = 5
  with pytest.raises(ConfigError, match="re-ranking needs a network with local tokens"):
    validate(c)


def both(*overrides):
  """Overrides for the stage-2 config and its init_run (the stage-1 config) alike."""
  return [*overrides, *(o.replace("--config.", "--config.init_run.", 1) for o in overrides)]


def stage2_args(workdir, root, *extra):
  tiny = [o for o in tiny_overrides(root) if "projection_size" not in o and "epochs" not in o]
  tiny.append("--config.data.synthetic.styles=0")  # the shared tiny world, not the demo's
  return main_args(workdir, *both(*tiny), "--config.init_run.model.projection_size=64",
                   "--config.init_run.train.epochs=1", "--config.train.epochs=1",
                   "--config.model.local_dim=8", "--config.model.num_local=6",
                   "--config.rerank.neg_hardness=4", "--config.train.cache_refresh_rate=16",
                   "--config.eval.rerank_top=5", "--config.eval.rerank_batch_size=4", *extra,
                   config="configs/demo_rerank.py")


def test_the_stage2_chain_runs_and_reranks(tiny_root, tmp_path):
  workdir = str(tmp_path / "rerank")
  proc = run_python(stage2_args(workdir, tiny_root))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "init_run: training the stage-1 model" in proc.stderr
  assert "hard negatives: computed for" in proc.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for stage in ("before", "after"):
    r = results[stage]["synthetic"]
    assert {"recall@1", "recall@5", "reranked_recall@1", "reranked_recall@5"} <= set(r)
    # re-ranking reorders the global top 5, so recall@5 is the global one
    assert r["reranked_recall@5"] == r["recall@5"]
  assert "synthetic re-ranked" in proc.stdout   # the printed table: both rows
  lists = np.load(os.path.join(workdir, hard_negatives.FILE))["lists"]
  assert lists.shape[1] == mining.HARD_NEGATIVES_KEPT and (lists[:, :4] >= 0).all()
  # fix=1: the global model is frozen, eval mode (BN statistics too); the local head and the
  # R2Former train
  _, start = final_state(os.path.join(workdir, "init_run"))
  _, end = final_state(workdir)
  for part in ("params", "batch_stats"):
    for module in ("backbone", "aggregation"):
      if module in start[part]["net"]:
        for a, b in zip(*(jax_leaves(s[part]["net"][module]) for s in (start, end))):
          np.testing.assert_array_equal(a, b)
  assert np.abs(end["params"]["net"]["local_head"]["bias"]).max() > 0   # initialised at zero
  assert np.isfinite(end["params"]["net"]["Reranker"]["cls_token"]).all()
  # AdamW (the demo's optimizer) leaves the R2Former's `ratio`, which no loss reads, at its
  # initial 0.5: no gradient, no decay (train_reranker.py's optimizer skips it)
  np.testing.assert_array_equal(end["params"]["net"]["Reranker"]["ratio"], [0.5])
  # the trained stage-2 run evaluates with re-ranking; its stage-1 model cannot
  args = [o for o in stage2_args(workdir, tiny_root) if "init_run" not in o][4:]
  proc = run_python(eval_args(str(tmp_path / "eval"), f"--checkpoint={workdir}", *args,
                              config="configs/demo_rerank.py"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.load(open(tmp_path / "eval" / "results.json"))
  assert again["synthetic"]["reranked_recall@1"] == results["after"]["synthetic"][
      "reranked_recall@1"]
  proc = run_python(eval_args(str(tmp_path / "eval1"),
                              f"--checkpoint={os.path.join(workdir, 'init_run')}", *args,
                              config="configs/demo_rerank.py"))
  assert_clean_error(proc, "has no trained R2Former")
  # the global network of a stage-2 run alone (eval.rerank_top=0): its global recall
  proc = run_python(eval_args(str(tmp_path / "global"), f"--checkpoint={workdir}", *args,
                              "--config.eval.rerank_top=0", config="configs/demo_rerank.py"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  alone = json.load(open(tmp_path / "global" / "results.json"))["synthetic"]
  assert "reranked_recall@1" not in alone
  assert alone["recall@1"] == results["after"]["synthetic"]["recall@1"]
  # rerank_top above the database size
  proc = run_python(eval_args(str(tmp_path / "eval2"), f"--checkpoint={workdir}", *args,
                              "--config.eval.rerank_top=100000", config="configs/demo_rerank.py"))
  assert_clean_error(proc, "eval.rerank_top=100000")


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


@pytest.mark.parametrize("reuse,refresh,mined", [(True, 16, 1), (True, 8, 4), (False, 16, 2)])
def test_one_refresh_per_epoch_is_mined_once_by_rerank_training(reuse, refresh, mined):
  """train_reranker.py: when cache_refresh_rate == queries_per_epoch the tuples of the first
  epoch are trained on in every later one (also after a resume); train.py mines again."""
  import types

  from vgssl_jax.training.triplets import TripletSource
  c = base_config()
  c.method, c.train.queries_per_epoch, c.train.cache_refresh_rate = "triplet", 16, refresh
  objective = types.SimpleNamespace(reuse_mining=reuse, mining_output="descriptor")
  source = TripletSource(c, objective, None, None)
  calls = []

  def fake_mine(state, epoch, segment):
    calls.append((epoch, segment))
    return {"queries": [epoch, segment], "positives": [1, 2], "negatives": [[3], [4]],
            "skipped_images": 1}
  source._mine = fake_mine
  plans = [source.mine(None, e, s) for e in range(2) for s in range(source.segments(e))]
  assert len(calls) == mined
  if mined == 1:
    assert plans[1] == {**plans[0], "skipped_images": 0}
    resumed = TripletSource(c, objective, None, None)   # a resumed run keeps the tuples
    resumed.restore(source.state())
    resumed._mine = fake_mine
    assert resumed.mine(None, 2, 0)["queries"] == plans[0]["queries"] and len(calls) == 1
