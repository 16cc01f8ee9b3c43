"""``deramos-realmusic``: the real-music steps of `make default-model`, one subcommand each:
`corpus` renders a corpus, `merge` lists several corpora as one training directory, `report`
judges checkpoints on a held-out set, `ladders` measures MI against severity one degradation
family at a time. Started through deramos.extras (a torch-free install gets
one line saying what to install). `report` imports the model only when it runs, so `--help` and
the corpus builder's missing-tools check answer without loading torch."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from ..data.merge import merge, parse_corpus
from ..data.realmusic import freeform
from ..data.realmusic.cli import corpus
from ..runtime.audio import AudioError
from ..runtime.cli_common import Group, errors_as_messages
from ..runtime.errors import EvaluationError, one_line
from .severity_ladders import LADDER_FAMILIES, SEVERITIES

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=Group, context_settings=CONTEXT)
def main():
    """Real-music corpora and what a model hears on them: render a corpus (corpus), list
    several corpora as one training directory (merge), report checkpoints on a held-out set
    (report), MI against severity per degradation family on clean clips (ladders).
    `make default-model` runs them all (scripts/train_realmusic_model.sh)."""


main.add_command(corpus)


@main.command("merge", context_settings=CONTEXT)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the merged corpus to (new or empty).")
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="DIR[:repeat=K][:dev=N]",
              help="A MusicEval-layout corpus (repeatable; the first keeps its ids): its training clips listed K "
                   "times, at most N of its dev clips.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the dev draws.")
def merge_command(out, corpora, seed):
    """Merge corpora (deramos-realmusic corpus, deramos-synth) into one training directory whose
    wav/ links to theirs; the i-th further corpus's systems and prompts are renamed S{i}.. / P{i}..
    Prints the clips taken per corpus and split as JSON (also OUT/merged.json)."""
    with errors_as_messages():
        summary = merge([parse_corpus(text) for text in corpora], out, seed)
    click.echo(json.dumps(summary))


def named_checkpoints(ctx, param, values) -> list[tuple[str, str]]:
    """--model NAME=CHECKPOINT, as (name, path) pairs in the order given."""
    pairs = []
    for spec in values:
        name, equals, path = spec.partition("=")
        if not (name and equals and path):
            raise click.BadParameter(f"{spec!r}: expected NAME=CHECKPOINT")
        pairs.append((name, path))
    return pairs


def load_named(name: str, path: str):
    """The model behind --model NAME=PATH; a missing or mismatched checkpoint is an EvaluationError."""
    from ..model.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:
        raise EvaluationError(f"--model {name}: {one_line(err)}") from None


@main.command("report", context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A held-out set (deramos-realmusic corpus --set heldout): its test list is scored.")
@click.option("--model", "models", multiple=True, required=True, callback=named_checkpoints, metavar="NAME=CHECKPOINT",
              help="A checkpoint or run directory, under the name the report gives it (repeatable).")
@click.option("--format-clips", default=24, show_default=True, type=click.IntRange(min=0),
              help="Clips re-encoded as PCM24/float/MP3/Ogg (0: skip).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Frozen-encoder feature cache (as deramos-train's).")
@click.option("--freeform", "prompt_set", is_flag=False, flag_value=str(freeform.PROMPT_SET_DIR),
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Also the free-form evaluation with this hand-written prompt set (alone: tests/data/freeform).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write every number here.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the tables here.")
def report(data, models, format_clips, cache_dir, prompt_set, json_out, markdown_out):
    """Judge checkpoints on a real-music held-out set: utterance and system SRCC for MI and TA,
    matched vs mismatched prompt AUC and paired wins (95 % Wilson interval), MI of clean and of
    heavily degraded clips, |dMI| between PCM16 and PCM24 / float WAV / MP3 / Ogg Vorbis of the
    same clip. Prints one JSON line per model, then the tables."""
    from .realmusic_report import evaluate_freeform, evaluate_model, markdown

    results = {}
    for name, path in models:
        with errors_as_messages():
            if not (data / "synth_meta.jsonl").is_file():
                raise EvaluationError(f"{data}: not a deramos-realmusic set (no synth_meta.jsonl)")
            model = load_named(name, path)
        results[name] = evaluate_model(model, data, format_clips, cache_dir)
        if prompt_set:
            results[name]["freeform"] = evaluate_freeform(model, data, prompt_set, cache_dir)
        click.echo(json.dumps({name: {k: v for k, v in results[name].items() if k != "metrics"}}))
    table = markdown(results)
    if prompt_set:
        table += f"\nFree-form prompts (hand-written, {prompt_set}):\n\n" + \
            freeform.markdown({name: r["freeform"] for name, r in results.items()})
    click.echo(table)
    if json_out:
        json_out.write_text(json.dumps(results, indent=1))
    if markdown_out:
        markdown_out.write_text(table)


def float_list(ctx, param, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers") from None


def mi_only(featurizer, waves, prompts):
    from .features import predict

    return predict(featurizer, waves, prompts)[0]


@main.command("ladders", context_settings=CONTEXT)
@click.option("--clips", "clips_jsonl", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Clean clips as JSONL lines {"path", "prompt"} (paths relative to the file), e.g. '
                   "tests/data/realmusic_clean/clips.jsonl.")
@click.option("--model", "models", multiple=True, required=True, callback=named_checkpoints, metavar="NAME=CHECKPOINT",
              help="A checkpoint or run directory, under the name the report gives it (repeatable; "
                   "src/deramos/default_model is the embedded default).")
@click.option("--families", default=",".join(LADDER_FAMILIES), show_default=True,
              help="Comma-separated degradation families to ladder.")
@click.option("--severities", default=",".join(f"{s:g}" for s in SEVERITIES), show_default=True, callback=float_list,
              help="The rungs above the clean clip, increasing, in (0, 1].")
@click.option("--limit", type=click.IntRange(min=2), help="Use only the first N clips.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the degradations.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write every number here.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the tables here.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar per model (stderr).")
def ladders(clips_jsonl, models, families, severities, limit, seed, json_out, markdown_out, progress):
    """MI against severity, one degradation family at a time: every clean clip scored as it is
    and with one family alone at each severity (post-render families; detune and timing jitter
    need the score). Per family: mean within-clip SRCC(MI, severity) with a bootstrap 95 %
    interval over clips, pooled SRCC, the share of clips whose MI falls at full severity, MI and
    the raters' latent MI per rung. The default model on 2 cores: 48 clips x 8 families x 5
    rungs in about 6 min. Prints one JSON line per model, then the tables."""
    from tqdm.auto import tqdm

    from .features import Featurizer
    from .severity_ladders import check_ladder, ladder_report, markdown, read_clean_clips

    chosen = tuple(f.strip() for f in families.split(",") if f.strip())
    with errors_as_messages():
        check_ladder(chosen, severities)          # before any model or clip is loaded
    results, clips_at = {}, {}
    for name, path in models:
        with errors_as_messages(AudioError):
            model = load_named(name, path)
            rate = model.cfg.audio.sample_rate
            if rate not in clips_at:              # models of one rate share the decoded clips
                clips_at[rate] = read_clean_clips(clips_jsonl, rate, limit)
            clips = clips_at[rate]
            score_mi = functools.partial(mi_only, Featurizer(model))
            with tqdm(total=len(chosen), desc=name, unit="family", disable=not progress) as bar:
                results[name] = ladder_report(clips, rate, score_mi, chosen, severities, seed, bar)
        click.echo(json.dumps({name: results[name]}))
    table = markdown(results, severities)
    click.echo(table)
    if json_out:
        json_out.write_text(json.dumps(results, indent=1))
    if markdown_out:
        markdown_out.write_text(table)


if __name__ == "__main__":
    main(prog_name="deramos-realmusic")
