"""deramos.scale: batch scoring on a Ray cluster (Ray Data actor pool of Scorers); no torch.

    import ray
    from deramos.scale import ScoringOptions, score_dataset
    ray.init()
    scored = score_dataset(ray.data.read_json("clips.jsonl"), ScoringOptions(bundle="bundle/"))

The command line is `deramos-run --jsonl clips.jsonl --ray [auto|local|ADDRESS] --out results.jsonl`.
`connect` / `start_local` reach a cluster (a local one listens on 127.0.0.1 only); `LoopbackCluster`
runs several raylets on one machine. Ray itself is imported only when a function here runs.
"""
from .batch import (
           PoolShape,
           Row,
           RunSummary,
           ScorerActor,
           ScoringOptions,
           measure_actor_memory,
           pool_shape,
           score_dataset,
           score_rows,
)
from .cluster import ClusterError, Connection, LoopbackCluster, connect, start_local

__all__ = ["ClusterError", "Connection", "LoopbackCluster", "PoolShape", "Row", "RunSummary", "ScorerActor",
           "ScoringOptions", "connect", "measure_actor_memory", "pool_shape", "score_dataset", "score_rows",
           "start_local"]
