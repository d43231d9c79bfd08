"""Re-ranking of the global top-K with the R2Former (the original's test.test_rerank):
local tokens of the queries and of the database images in anybody's top K, every (query,
candidate) pair scored on the device, each query's K candidates reordered by
softmax(logits)[1], descending (the R2Former's final_score is not used, as in the
original). Plugs into evaluation.runner.evaluate_places as its `rerank` step.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.places import PlaceDataset
from vgssl_jax import sharding
from vgssl_jax.errors import ConfigError
from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.progress import Progress


# (query, candidate) pairs the R2Former scores per step of the device loop: as fast as larger
# chunks on CPU (benchmarks/README.md) and a few hundred MB of activations at 500 tokens
PAIR_CHUNK = 16


def reorder(predictions: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """(Q, K) candidates and their (Q, K) scores -> the candidates by descending score (ties
  keep the global order)."""
  order = np.argsort(-scores, axis=1, kind="stable")
  return np.take_along_axis(predictions, order, axis=1)


class Reranker:
  """`Reranker(embedder, variables, top, batch_size)(places, predictions)` -> predictions
  whose first `top` columns are re-ranked (the rest keep their global order).

  `batch_size` queries (each with its `top` candidates) are scored per call of one jitted
  function, the last call padded: one compilation per evaluation.
  """

  def __init__(self, embedder, variables: dict, top: int, batch_size: int = 4):
    model = embedder.model
    if not isinstance(model, GeoLocalizationNet) or model.Reranker is None:
      raise ConfigError("re-ranking (eval.rerank_top > 0) needs a network with local tokens and "
                        "an R2Former (model.local_dim > 0).")
    self.embedder, self.variables, self.top, self.batch_size = embedder, variables, top, batch_size
    self.last_logits = None  # (Q, top, 2) of the last call, for inspection and tests
    mesh = embedder.mesh
    self._logits = jax.jit(functools.partial(self._pair_logits, model),
                           in_shardings=(sharding.replicated(mesh),) * 3,
                           out_shardings=sharding.replicated(mesh))

  @staticmethod
  def _pair_logits(model, variables, q_local, db_local):
    """(B, n, d) queries, (B, K, n, d) their candidates -> (B, K, 2) logits, PAIR_CHUNK
    pairs at a time (a loop on the device): memory stays that of one chunk, whatever B x K
    (all 800 pairs of 8 queries' top 100 at once would ask for about 39 GB)."""
    b, k = db_local.shape[:2]
    n = b * k
    c = min(PAIR_CHUNK, n)
    chunks = -(-n // c)
    pairs = jnp.minimum(jnp.arange(chunks * c), n - 1).reshape(chunks, c)  # padded: repeats
    y_all = db_local.reshape(n, *db_local.shape[2:])

    def chunk_logits(index):
      return model.apply({"params": variables["params"]}, q_local[index // k], y_all[index],
                         method=GeoLocalizationNet.rerank_logits)
    logits = jax.lax.map(chunk_logits, pairs)
    return logits.reshape(chunks * c, 2)[:n].reshape(b, k, 2)

  def logits(self, q_local: np.ndarray, db_local: np.ndarray, candidates: np.ndarray
             ) -> np.ndarray:
    """(Q, K, 2) logits of query i against db_local[candidates[i]]."""
    q, k = candidates.shape
    bs = min(self.batch_size, q)
    out = []
    for start in Progress(range(0, q, bs), total=-(-q // bs), desc="re-ranking", unit="batch",
                          enabled=self.embedder.progress):
      rows = np.arange(start, start + bs)
      rows = np.where(rows < q, rows, q - 1)  # the last batch padded with repeats
      part = self._logits(self.variables, jnp.asarray(q_local[rows]),
                          jnp.asarray(db_local[candidates[rows]]))
      out.append(np.asarray(part)[:min(bs, q - start)])
    return np.concatenate(out)

  def __call__(self, places: PlaceDataset, predictions: np.ndarray) -> np.ndarray:
    k = min(self.top, predictions.shape[1])
    if self.top > places.num_database:
      raise ConfigError(f"eval.rerank_top={self.top} exceeds the {places.num_database} database "
                        f"images of {places.name}/{places.split}; lower eval.rerank_top.")
    top = predictions[:, :k]
    needed, inverse = np.unique(top, return_inverse=True)  # only the candidates are embedded
    name = f"{places.name}/{places.split}"
    db_local = self.embedder(self.variables, places.images("database"), needed, output="local",
                             desc=f"{name} database local tokens")
    q_local = self.embedder(self.variables, places.images("queries"), output="local",
                            desc=f"{name} query local tokens")
    logits = self.logits(q_local, db_local, inverse.reshape(top.shape))
    self.last_logits = logits
    scores = jax.nn.softmax(logits, axis=-1)[..., 1]
    reranked = reorder(top, np.asarray(scores))
    logging.info("%s: re-ranked the top %d of %d queries", name, k, len(top))
    return np.concatenate([reranked, predictions[:, k:]], axis=1)
