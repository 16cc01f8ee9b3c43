"""deramos.scale: batch scoring on a Ray cluster (Ray Data actor pool of Scorers); no torch.

    import ray
    from deramos.scale import ScoringOptions, score_dataset
    ray.init()
    scored = score_dataset(ray.data.read_json("clips.jsonl"), ScoringOptions(bundle="bundle/"))

The command line is `deramos-run --jsonl clips.jsonl --ray [auto|local|ADDRESS] --out results.jsonl`.
Ray itself is imported only when a function here runs.
"""
from .batch import Row, RunSummary, ScorerActor, ScoringOptions, score_dataset, score_rows

__all__ = ["Row", "RunSummary", "ScorerActor", "ScoringOptions", "score_dataset", "score_rows"]
