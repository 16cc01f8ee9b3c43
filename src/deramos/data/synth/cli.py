"""``deramos-synth``: write a synthetic corpus in the MusicEval layout."""

from __future__ import annotations

import click

from ...runtime.cli_common import Command, defaults_of, fail
from ...runtime.errors import one_line
from .corpus import generate_corpus

DEFAULTS = defaults_of(generate_corpus)
CLIPS_PER_SYSTEM = 3   # each system needs clips in train, dev and test


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write the corpus to (created if missing).")
@click.option("--clips", default=DEFAULTS["clips"], show_default=True, type=click.IntRange(min=1),
              help=f"Number of clips in all splits together: at least {CLIPS_PER_SYSTEM} per system "
                   f"({CLIPS_PER_SYSTEM * DEFAULTS['systems']} for the default {DEFAULTS['systems']} systems).")
@click.option("--systems", default=DEFAULTS["systems"], show_default=True, type=click.IntRange(min=1), help=f"Number of simulated text-to-music systems (at least {CLIPS_PER_SYSTEM} clips each).")
@click.option("--seed", default=DEFAULTS["seed"], show_default=True, type=click.IntRange(min=0), help="Random seed; the same seed gives byte-identical files.")
@click.option("--min-seconds", default=DEFAULTS["min_seconds"], show_default=True, type=click.FloatRange(min=0.5), help="Shortest clip length.")
@click.option("--max-seconds", default=DEFAULTS["max_seconds"], show_default=True, type=click.FloatRange(min=0.5), help="Longest clip length.")
@click.option("--progress/--no-progress", default=DEFAULTS["progress"], show_default=True, help="Show a progress bar.")
def main(out_dir, clips, systems, seed, min_seconds, max_seconds, progress):
    """Generate a synthetic MOS corpus laid out exactly like MusicEval.

    Writes wav/, sets/{train,dev,test}_mos_list.txt, prompt_info.txt,
    demo_prompt_info.txt, system_mos/system_mos_phase1.csv and synth_meta.jsonl
    under OUT. Polyphonic clips are rendered from prompt attributes by simulated
    systems with distinct quality and prompt-faithfulness; MI and TA are means of
    five simulated raters' integer votes.
    """
    if clips < CLIPS_PER_SYSTEM * systems:   # checked before anything is written
        raise click.BadParameter(f"{clips} is too few for {systems} systems: the minimum is "
                                 f"{CLIPS_PER_SYSTEM * systems} ({CLIPS_PER_SYSTEM} per system); "
                                 f"give more clips or fewer --systems", param_hint="--clips")
    try:
        summary = generate_corpus(out_dir, clips, systems, seed, min_seconds, max_seconds, progress=progress)
    except ValueError as error:    # options that do not fit together
        raise click.UsageError(one_line(error)) from None
    except OSError as error:       # --out cannot be written
        fail(error)
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items())
    click.echo(f"wrote {summary['clips']} clips ({splits}) to {summary['out_dir']}")
    click.echo(f"systems: {summary['systems']} (demo-prompt systems: {', '.join(summary['demo_systems']) or 'none'}), prompts: {summary['prompts']}")
    click.echo(f"mean MI {summary['mean_mi']:.2f}, mean TA {summary['mean_ta']:.2f}; system-level range MI {summary['system_mi_range']:.2f}, TA {summary['system_ta_range']:.2f}")
    click.echo(f"{summary['audio_seconds']:.0f} s of audio in {summary['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main(prog_name="deramos-synth")
