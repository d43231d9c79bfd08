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

import jax
import jax.numpy as jnp

from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.objectives import losses
from vgssl_jax.objectives.ssl import ViewConfig
from vgssl_jax.objectives.triplet import TupleObjective

# what fix = 1 freezes: all of the network but local_head and Reranker
GLOBAL_MODULES = ("backbone", "aggregation", "projector")


class RerankObjective(TupleObjective):
  # an epoch that is one refresh of all its queries mines once, in the first epoch
  reuse_mining = True
  def __init__(self, name: str, model: GeoLocalizationNet, margin: float = 0.1,
               views: ViewConfig = ViewConfig(), loss: str = "ce", fix: bool = True):
    if model.Reranker is None:
      raise ValueError("the re-ranking objective needs a network with local tokens "
                       "(model.local_dim > 0)")
    if loss not in losses.RERANK_LOSSES:
      raise ValueError(f"unknown re-ranking loss {loss!r}; expected one of "
                       f"{losses.RERANK_LOSSES}")
    self.name, self.model, self.margin, self.views = name, model, margin, views
    self.rerank_loss, self.fix = loss, bool(fix)
    # parameter paths under "net" the step leaves unchanged (training.step)
    self.frozen = GLOBAL_MODULES if self.fix else ()

  @classmethod
  def from_config(cls, name: str, model: GeoLocalizationNet, config) -> "RerankObjective":
    return cls(name, model, config.train.margin,
               ViewConfig(config.train.random_resized_crop, config.train.horizontal_flip),
               config.rerank.loss, config.rerank.fix)

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
                                      mutable=["batch_stats"])
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
