"""``deramos-realmusic corpus``: write a real-music MOS corpus in the MusicEval layout (the group
with the `merge` and `report` steps is deramos.training.realmusic_cli)."""
from __future__ import annotations

import importlib.util
import shutil

import click

from ...runtime.cli_common import Command, fail
from .render import RenderError

PIP_EXTRA = "pip install 'deramos[realmusic]'"
APT_RENDERING = "apt-get install fluidsynth fluid-soundfont-gm timgm6mb-soundfont"


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--set", "which", type=click.Choice(["train", "heldout"]), default="train", show_default=True,
              help="Which sources to draw on: the training set's or the held-out set's (disjoint).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write the corpus to.")
@click.option("--systems", default=8, show_default=True, type=click.IntRange(min=1), help="Simulated systems.")
@click.option("--one-family-systems", default=0, show_default=True, type=click.IntRange(min=0),
              help="Further systems whose every clip has one degradation family alone at a uniform severity "
                   "(what each family costs MI, unconfounded).")
@click.option("--clips-per-system", default=50, show_default=True, type=click.IntRange(min=3), help="Clips each system makes.")
@click.option("--recording-share", default=0.25, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of clips cut from recordings rather than rendered from scores.")
@click.option("--arrangement-share", default=0.4, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of clips that are folk tunes arranged in a style (pop, rock, electronic, jazz, folk, "
                   "chiptune) with chords, bass and drums; the rest after recordings are scores.")
@click.option("--people-prompts", "people_share", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of prompts written as people write them (1-4 kinds in many words and shapes, BPM, "
                   "genres); the rest name all five template kinds. Above 0 the counterfactual prompts also mix "
                   "partial prompts and prompts about things that are not music (TA 1).")
@click.option("--pieces", default=80, show_default=True, type=click.IntRange(min=1), help="Scores drawn from the corpus.")
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(min=4.0), help="Clip length.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Rendering processes.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def corpus(which, out_dir, systems, one_family_systems, clips_per_system, recording_share, arrangement_share, people_share, pieces, seconds,
         seed, workers, progress):
    """Render real music into a MOS corpus laid out like MusicEval.

    Scores from music21's corpus are rendered with fluidsynth through a General-MIDI soundfont
    (instruments re-assigned per prompt), folk tunes from it are arranged in a style and
    rendered the same way, recordings are cut from Debian game-soundtrack packages; simulated systems degrade them and simulated raters score them, as deramos-synth
    does. Needs music21 (pip install 'deramos[realmusic]') and the Debian packages fluidsynth,
    fluid-soundfont-gm, timgm6mb-soundfont and the music packages in corpus.RECORDING_DIRS
    (wesnoth-1.16-music, supertux-data, xmoto-data, extremetuxracer-data; hyperrogue-music,
    drascula-music, warzone2100-music, lincity-ng-data, neverball-common).
    Sources and their licences are written to OUT/sources.json.
    """
    missing = missing_tools()
    if missing:
        fail(missing)
    from .corpus import build_corpus

    try:
        summary = build_corpus(out_dir, which, systems, clips_per_system, recording_share, pieces, seconds,
                               seed, workers, progress, arrangement_share=arrangement_share,
                               people_share=people_share, one_family_systems=one_family_systems)
    except (RenderError, ValueError) as error:
        fail(error)
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items())
    click.echo(f"wrote {summary['clips']} clips ({splits}; {summary['scores']} scores, {summary['arrangements']} "
               f"arrangements, {summary['recordings']} recordings) to {out_dir} in {summary['wall_seconds']:.0f} s")
    click.echo(f"mean MI {summary['mean_mi']:.2f}, mean TA {summary['mean_ta']:.2f}; "
               f"{len(summary['problems'])} items skipped (listed in sources.json)")


def missing_tools() -> str | None:
    """One line saying what to install when music21 or fluidsynth is missing, else None."""
    needs = []
    try:
        music21 = importlib.util.find_spec("music21")
    except (ImportError, ValueError):      # a broken or blocked install
        music21 = None
    if music21 is None:
        needs.append(f"music21 ({PIP_EXTRA})")
    if shutil.which("fluidsynth") is None:
        needs.append(f"fluidsynth with General-MIDI soundfonts ({APT_RENDERING})")
    if not needs:
        return None
    return f"deramos-realmusic needs {' and '.join(needs)}; nothing was written"

