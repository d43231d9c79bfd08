"""Stage 2's objective (train_reranker.py): the R2Former (and local head) trained on the
(query, best positive, M negatives) tuples of the supervised path, optionally jointly with
the global network (docs/original.md §Stage 2).

  fix = 1: the global network (backbone, aggregation) is frozen and runs in eval mode; only
           the local head and the R2Former train, on the re-ranking loss.
  fix = 0: everything trains in train mode; the global triplet margin sum is added.
The loss is losses.rerank_loss: per negative slice the `rerank.loss` term of the (q, p) and
(q, n_j) logits, over B * M.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import mining
from vgssl_jax.errors import ConfigError, check_choice
from vgssl_jax.models import backbones
from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.objectives import losses
from vgssl_jax.objectives.base import dropout_rngs
from vgssl_jax.objectives.triplet import Triplet
from vgssl_jax.objectives.views import ViewConfig

# what fix = 1 freezes: all of the network but local_head and Reranker
GLOBAL_MODULES = ("backbone", "aggregation", "projector")


class RerankObjective(Triplet):
  reuse_mining = True  # an epoch that is one refresh of all its queries mines once
  keys = ("train.margin", "rerank.")

  def __init__(self, name: str, model: GeoLocalizationNet, margin: float, views: ViewConfig,
               loss: str = "ce", fix: bool = True):
    if model.Reranker is None:
      raise ValueError("the re-ranking objective needs a network with local tokens "
                       "(model.local_dim > 0)")
    if loss not in losses.RERANK_LOSSES:
      raise ValueError(f"unknown re-ranking loss {loss!r}; expected one of "
                       f"{losses.RERANK_LOSSES}")
    super().__init__(name, model, margin, views)
    self.rerank_loss, self.fix = loss, bool(fix)
    # parameter paths under "net" the step leaves unchanged (training.step)
    self.frozen = GLOBAL_MODULES if self.fix else ()

  @classmethod
  def from_config(cls, name: str, model: GeoLocalizationNet, config) -> "RerankObjective":
    return cls(name, model, config.train.margin, ViewConfig.from_config(config),
               config.rerank.loss, config.rerank.fix)

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    """The re-ranking settings: local tokens, a reranker to select by, a stage-1 model to
    start from (training), the loss and the hard negatives."""
    super().check_config(config, purpose)
    mc, ec, rc, t = config.model, config.eval, config.rerank, config.train
    if not mc.local_dim:
      raise ConfigError("method=r2former trains the re-ranking network, which needs local "
                        "tokens: set --config.model.local_dim=128 (the original's) on a deit or "
                        "conv5 ResNet backbone.")
    if purpose == "train" and not ec.rerank_top:
      raise ConfigError("method=r2former validates and selects models on the re-ranked recall: "
                        "set --config.eval.rerank_top=100 (the original's; at most the val "
                        "database).")
    if purpose == "train" and not t.init_from and not config.init_run and not rc.random_global:
      raise ConfigError("method=r2former re-ranks the global top list of a trained stage-1 model: "
                        "set --config.train.init_from=<its run folder or checkpoint> (the "
                        "original always starts from one), or --config.rerank.random_global=True "
                        "to train on an untrained global network on purpose.")
    check_choice("rerank.loss", rc.loss, losses.RERANK_LOSSES)
    check_choice("rerank.fix", rc.fix, (0, 1))
    if t.mining.startswith("global"):
      if rc.neg_hardness < t.negs_num_per_query:
        raise ConfigError(f"rerank.neg_hardness={rc.neg_hardness} is smaller than "
                          f"train.negs_num_per_query={t.negs_num_per_query}: global mining "
                          "samples the negatives from each query's first neg_hardness.")
      if rc.neg_hardness > mining.HARD_NEGATIVES_KEPT:
        raise ConfigError(f"rerank.neg_hardness={rc.neg_hardness} exceeds the "
                          f"{mining.HARD_NEGATIVES_KEPT} hard negatives kept per query.")
    if rc.hard_negatives and not os.path.isfile(rc.hard_negatives):
      raise ConfigError(f"rerank.hard_negatives={rc.hard_negatives!r} is not a file; give a "
                        "list precomputed by an earlier run (hard_negatives.npz in its folder) "
                        "or leave it empty to compute it.")
    tokens = int(np.prod(backbones.token_grid(mc, tuple(config.data.image_size))))
    if mc.num_local > tokens:
      logging.warning("model.num_local=%d exceeds the %d tokens of a %dx%d image: %d local "
                      "tokens per image are used (the original clamps too)", mc.num_local,
                      tokens, *config.data.image_size, tokens)

  def loss(self, params: dict, batch_stats: dict, objective_state: dict, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    b, m = batch["negatives"].shape[:2]
    variables = {"params": params["net"], "batch_stats": batch_stats["net"]}
    images = self.images(batch, key)
    if self.fix:  # the frozen global network in eval mode: no batch statistics change
      out, new_stats = self.model.apply(variables, images, train=False, project=False,
                                        local=True), batch_stats["net"]
    else:
      out, updates = self.model.apply(variables, images, train=True, project=False, local=True,
                                      mutable=["batch_stats"], rngs=dropout_rngs(key))
      new_stats = updates.get("batch_stats", batch_stats["net"])
    g, t = out["descriptor"], out["local"]
    qg, pg, ng = g[:b], g[b:2 * b], g[2 * b:].reshape(b, m, -1)
    ql, pl, nl = t[:b], t[b:2 * b], t[2 * b:].reshape(b, m, *t.shape[1:])

    def logits(xl, yl):
      return self.model.apply(variables, xl, yl, method=GeoLocalizationNet.rerank_logits)
    pos = logits(ql, pl)
    rep = lambda x: jnp.repeat(x[:, None], m, axis=1).reshape(b * m, *x.shape[1:])  # noqa: E731
    neg = logits(rep(ql), nl.reshape(b * m, *nl.shape[2:])).reshape(b, m, 2)
    loss = losses.rerank_loss(self.rerank_loss, pos, neg, self.margin,
                              None if self.fix else (qg, pg, ng))
    return loss, ({"net": new_stats}, objective_state)
