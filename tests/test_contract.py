"""The graph contract (runtime/contract.py) as the one place a graph's tensors are named: the
example feeds it builds for every graph, the FP32-kept node prefixes, the one tolerance table
every comparison gates on, and a scan of src/ that fails when another file spells a feed name."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from deramos.runtime import compare
from deramos.runtime.contract import (
    AUDIO_ENCODER,
    GRAPHS,
    HEADS,
    PIPELINE_RENAMES,
    SPECS,
    TEXT_ENCODER,
    TOLERANCES,
    Tolerance,
    axis_sizes,
    fp32_kept_prefixes,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "deramos"
CONTRACT = SRC / "runtime" / "contract.py"
# "mi" and "ta" are also the scores' own names (Score.mi, the result rows' JSON, the torch heads'
# dict, training's targets): a literal cannot tell them from the heads graph's outputs.
SCORE_NAMES = {"mi", "ta"}
# The torch heads return a dict keyed by these names, and the heads graph's outputs are named
# after them (export/graphs.py reads that dict by the contract's names).
THEIR_OWN = {SRC / "model" / "heads.py": {"mi_dist", "ta_dist"}}
SIZES = axis_sizes(samples=1600, samples_per_frame=160, tokens=7, audio_dim=12, text_dim=10)


def feed_names() -> set[str]:
    return {name for spec in SPECS.values() for name in (*spec.input_names, *spec.output_names)} - SCORE_NAMES


def spelled_feed_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal in `path` that is a graph tensor's name."""
    names = feed_names() - THEIR_OWN.get(path, set())
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names)


# -- no file but the contract spells a feed name ----------------------------------------------------


def test_no_file_outside_the_contract_spells_a_feed_name():
    found = {path.relative_to(SRC).as_posix(): hits for path in sorted(SRC.rglob("*.py"))
             if path != CONTRACT and (hits := spelled_feed_names(path))}
    assert found == {}


def test_the_scan_catches_a_planted_feed_name(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('feeds = {"waveform": wave, "lengths": lengths}\n'
                       'tokens = out["tokens"]\n'
                       'note = "the waveform of a clip"      # prose, not a name\n'
                       'score = row["mi"]                    # a score, not a tensor\n')
    assert spelled_feed_names(planted) == [(1, "lengths"), (1, "waveform"), (2, "tokens")]
    assert (1, "frame_mask") in spelled_feed_names(_with_line(tmp_path, SRC / "runtime" / "scorer.py",
                                                              'x = out["frame_mask"]'))


def _with_line(folder: Path, source: Path, line: str) -> Path:
    copy = folder / source.name
    copy.write_text(line + "\n" + source.read_text(encoding="utf-8"))
    return copy


def test_the_contract_itself_spells_every_name_the_scan_looks_for():
    assert {name for _, name in spelled_feed_names(CONTRACT)} == feed_names()
    assert feed_names() >= {"waveform", "lengths", "input_ids", "attention_mask", "frames", "frame_mask",
                            "tokens", "token_mask", "mi_dist", "ta_dist"}


# -- example feeds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS)
def test_example_feeds_name_and_shape_every_input(graph):
    spec = SPECS[graph]
    feeds = spec.example_feeds(3, SIZES, vocab=50)
    assert list(feeds) == list(spec.input_names)
    assert {name: value.shape for name, value in feeds.items()} == spec.shapes({**SIZES, "batch": 3})
    assert {name: value.dtype.name for name, value in feeds.items()} == {t.name: t.dtype for t in spec.inputs}


def test_example_feeds_are_unequal_rows_of_valid_values():
    wave, lengths = AUDIO_ENCODER.example_feeds(3, SIZES).values()
    assert wave.shape == (3, 1600) and lengths.tolist() == [1600, 1066, 1066]
    assert 0.05 < float(wave.std()) < 0.2
    ids, mask = TEXT_ENCODER.example_feeds(3, SIZES, vocab=50).values()
    assert mask.sum(axis=1).tolist() == [7, 4, 4] and mask[1, 4:].tolist() == [0, 0, 0]
    assert 5 <= int(ids.min()) and int(ids.max()) < 50
    heads = HEADS.example_feeds(2, SIZES)
    assert heads["frame_mask"].sum(axis=1).tolist() == [10, 6] and heads["frame_mask"].dtype == bool
    assert heads["frames"].shape == (2, 10, 12) and heads["tokens"].shape == (2, 7, 10)


def test_example_feeds_are_the_same_for_the_same_seed():
    first, again, other = (AUDIO_ENCODER.example_feeds(2, SIZES, seed=s)["waveform"] for s in (4, 4, 5))
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_frames_follow_from_samples():
    assert axis_sizes(samples=1600, samples_per_frame=160)["frames"] == 10
    assert axis_sizes(samples=100, samples_per_frame=160)["frames"] == 1
    assert "frames" not in axis_sizes(tokens=3) and axis_sizes(tokens=3) == {"tokens": 3}


def test_feeds_names_values_in_the_specs_order_and_refuses_a_wrong_count():
    assert list(HEADS.feeds(1, 2, 3, 4)) == list(HEADS.input_names)
    assert HEADS.outputs_of(dict(zip(reversed(HEADS.output_names), range(4)))) == (3, 2, 1, 0)
    with pytest.raises(ValueError, match=r"audio_encoder takes 2 inputs \(waveform, lengths\), got 1"):
        AUDIO_ENCODER.feeds(np.zeros((1, 10)))


def test_the_heads_token_mask_comes_from_the_text_encoders_input():
    (renamed,) = PIPELINE_RENAMES.values()
    ((heads_input, text_input),) = renamed.items()
    assert heads_input in HEADS.input_names and text_input in TEXT_ENCODER.input_names


# -- the FP32-kept region and the tolerance table ---------------------------------------------------


def test_fp32_kept_prefixes_are_every_graphs_together():
    prefixes = fp32_kept_prefixes()
    assert prefixes == tuple(sorted(prefixes)) and len(set(prefixes)) == len(prefixes)
    assert set(prefixes) == {p for spec in SPECS.values() for p in spec.fp32_node_prefixes}
    assert "/encoder/frontend/" in prefixes


def test_one_tolerance_table():
    assert compare.TOLERANCES is TOLERANCES              # the comparator gates on the contract's table
    assert TOLERANCES["fp32"] == Tolerance(max_abs=1e-3, min_cosine=0.9999)
    assert TOLERANCES["fp16"] == Tolerance(max_abs=0.05, rel_noise=0.1, srcc=0.99)
    assert TOLERANCES["int8"] == Tolerance(mae=0.15, rel_noise=0.2, srcc=0.97)
    assert TOLERANCES["fp32"].to_dict() == {"max_abs": 1e-3, "min_cosine": 0.9999}
    assert TOLERANCES["fp32"].tightened(0.5).min_cosine == pytest.approx(0.99995)


def _comparison(tolerance: Tolerance, audio_cosine: float) -> compare.Comparison:
    scores = {"MI": np.linspace(1, 5, 8), "TA": np.linspace(2, 4, 8)}
    comparison = compare.compare_scores(scores, scores, precision="fp32", candidate_name="c", reference_name="r",
                                        source="s", tolerance=tolerance)
    comparison.graphs = {"audio_encoder": {"max_abs": 0.1, "mae": 0.01, "min_cosine": audio_cosine},
                         "text_encoder": {"max_abs": 0.0, "mae": 0.0, "min_cosine": 1.0},
                         "heads": {"max_abs": 0.0, "mae": 0.0}}
    return comparison


def test_an_encoder_below_the_cosine_gate_fails_naming_graph_output_and_measure():
    failing = _comparison(TOLERANCES["fp32"], 0.9991)
    assert failing.failures == ["audio_encoder output frames: min cosine 0.999100 < 0.9999"]
    assert _comparison(TOLERANCES["fp32"], 0.99995).passed
    assert _comparison(TOLERANCES["fp16"], 0.9991).passed        # FP16's tolerance has no cosine gate
