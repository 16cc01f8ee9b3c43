"""Fitting the AttributeReader (model/heads.py) on its own labels, before TA training.

Audio side: every training clip of a deramos-realmusic corpus, labelled by its synth_meta.jsonl
record's rendered_attributes (which families sound, which tempo band, mode, ...). Text side:
prompts drawn from the training generators (realmusic/phrasing.py's people prompts, true and
partly wrong, attributes.prompt_for's templates, not-music prompts), labelled by what each
asserts; no text of the free-form evaluation is kept. Both are plain supervised classifiers, so a
word the TA loss never paired with audio still lands on the attribute it names. The reader is then
frozen and the TA MLP learns to weigh what it reads.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..data.clips import crop
from ..data.realmusic import phrasing
from ..data.realmusic.attributes import (
    ASSERTION_VALUES,
    FAMILIES,
    RealAttributes,
    assertion_of,
    prompt_for,
    random_attributes,
)
from ..data.realmusic.freeform import held_out_texts, normalised
from ..data.synth.music import tempo_word
from ..model.heads import masked_mean
from ..model.text_encoder import tokenizer_file
from ..runtime.errors import TrainingError
from .realmusic_report import read_records

MIN_LABELLED_CLIPS = 20
UNLABELLED = -100   # cross_entropy's ignore_index
# The audio side is 536 features per clip against ~800 clips: without a penalty it fits the training
# clips exactly and is overconfident elsewhere. 0.03 had the lowest log-loss on the real-music
# corpus's dev clips (0.0001: 6.66, 0.01: 3.50, 0.03: 3.26, 0.1: 3.31, 0.3: 3.59, summed over kinds).
AUDIO_L2 = 0.03
# Which generator a text-side training prompt comes from (shares).
# "other_text": sentences no prompt generator writes (the standard library's docstrings, words drawn
# from the tokenizer's vocabulary), so that text far from every generator still reads as not music.
PROMPT_SOURCES = {"people": 0.42, "people_wrong": 0.28, "template": 0.14, "not_music": 0.10, "other_text": 0.06}
DOCSTRING_MODULES = ("argparse", "ast", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
                     "copy", "csv", "datetime", "decimal", "difflib", "email.message", "fractions", "ftplib",
                     "functools", "getpass", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
                     "http.client", "imaplib", "inspect", "ipaddress", "itertools", "json", "locale", "logging",
                     "mailbox", "math", "netrc", "os", "pathlib", "pickle", "platform", "poplib", "pprint", "queue",
                     "random", "re", "sched", "secrets", "shelve", "shutil", "smtplib", "socket", "sqlite3",
                     "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
                     "timeit", "tokenize", "traceback", "turtle", "unittest", "urllib.request", "uuid", "zipfile")


def attribute_vocabulary() -> dict[str, list[str]]:
    """The reader's vocabulary: the instrument families, then every other asserted kind's values."""
    return {"instrument": list(FAMILIES), **{kind: list(values) for kind, values in ASSERTION_VALUES.items()}}


def fit_attribute_reader(model, featurizer, examples: list, data: str | Path, *, seed: int,
                         prompts: int = 12000, steps: int = 400, progress: bool = False) -> dict:
    """Fit model.heads.ta.reader (audio side on `examples` labelled from data/synth_meta.jsonl,
    text side on `prompts` generated prompts), freeze it, and return how well each side fits."""
    reader = model.heads.ta.reader
    vocabulary = model.cfg.heads.ta_attributes
    heard, waves = labelled_clips(examples, data)
    frames, mask = featurizer.audio([crop(w, model.cfg.audio.window_samples, None) for w in waves])
    clip = masked_mean(frames, mask).cpu()
    reader.audio_mean.copy_(clip.mean(0))
    reader.audio_scale.copy_(clip.std(0).clamp(min=1e-4))
    rng = np.random.default_rng([seed, 19])
    texts, asserts = training_prompts(heard, prompts, rng, tokenizer_file(model.cfg.text))
    report = {"audio_clips": len(heard), "prompts": len(texts)}
    frames, mask = frames.cpu(), mask.cpu()
    audio_weights = [reader.audio_families.weight, *(head.weight for head in reader.audio_kinds.values())]
    report["audio_accuracy"] = _fit(lambda: _audio_outputs(reader, frames, mask), audio_targets(heard, vocabulary),
                                    reader, steps, seed, penalised=audio_weights, l2=AUDIO_L2)
    tokens = embed_prompts(model, texts, progress=progress)
    report["text_accuracy"] = _fit(lambda: _text_outputs(reader, tokens),
                                   text_targets(asserts, vocabulary), reader, steps, seed)
    reader.requires_grad_(False)
    return report


def labelled_clips(examples: list, data: str | Path) -> tuple[list[RealAttributes], list[np.ndarray]]:
    """(attributes, wave) of each distinct training clip whose record says what it sounds like."""
    path = Path(data) / "synth_meta.jsonl"
    if not path.is_file():
        raise TrainingError(f"--ta-attributes: {path} not found (a deramos-realmusic corpus has one)")
    # deramos-realmusic's attributes have an ensemble; deramos-synth's name other things ("pad", "swing")
    records = {name: RealAttributes.from_dict(record["rendered_attributes"]) for name, record in read_records(data).items()
               if "ensemble" in record.get("rendered_attributes", {})}
    seen, heard, waves = set(), [], []
    for example in examples:
        name = example.clip.path.name
        if name in records and name not in seen:
            seen.add(name)
            heard.append(records[name])
            waves.append(example.wave)
    if len(heard) < MIN_LABELLED_CLIPS:
        raise TrainingError(f"--ta-attributes: {len(heard)} training clips of {path} say what they sound like "
                            f"(deramos-realmusic rendered_attributes); need at least {MIN_LABELLED_CLIPS}")
    return heard, waves


def training_prompts(heard: list[RealAttributes], count: int, rng, tokenizer: Path) -> tuple[list[str], list[dict]]:
    """`count` prompts with what each asserts (kind -> value; {} for not music); attributes from
    the corpus (70 %; clips whose every value has words: not a recording tagged "dance" or "pad") or drawn
    at random, generators by PROMPT_SOURCES."""
    avoid = held_out_texts()
    heard = [h for h in heard if all(h.kind_value(k) in v for k, v in ASSERTION_VALUES.items())
             and all(f in FAMILIES for f in h.families)] or [random_attributes(rng)]
    sources, shares = list(PROMPT_SOURCES), list(PROMPT_SOURCES.values())
    texts, asserts = [], []
    while len(texts) < count:
        attributes = heard[int(rng.integers(len(heard)))] if rng.random() < 0.7 else random_attributes(rng)
        source = sources[int(rng.choice(len(sources), p=shares))]
        if source == "people":
            text, said = phrasing.describe(attributes, rng)
        elif source == "people_wrong":
            text, said = phrasing.wrong_description(attributes, rng)
        elif source == "template":
            text, said = prompt_for(attributes, rng), assertion_of(attributes)
        elif source == "not_music":
            text, said = phrasing.unrelated_prompt(rng), {}
        else:
            text, said = other_text(rng, tokenizer), {}
        if normalised(text) not in avoid:
            texts.append(text)
            asserts.append(band_tempo(said))
    return texts, asserts


def other_text(rng, tokenizer: Path) -> str:
    """A sentence about anything but music: a docstring's first sentence, or 2-8 common words."""
    if rng.random() < 0.6:
        sentences = docstring_sentences()
        return sentences[int(rng.integers(len(sentences)))]
    words = common_words(tokenizer)
    return " ".join(words[int(i)] for i in rng.integers(len(words), size=int(rng.integers(2, 9))))


@functools.lru_cache(maxsize=1)
def docstring_sentences() -> list[str]:
    """First sentences (3-20 words) of the public functions' and classes' docstrings of
    DOCSTRING_MODULES, in a fixed order, without a music word."""
    music = music_words()
    found = set()
    for name in DOCSTRING_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:   # turtle without tkinter
            continue
        for attribute in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attribute, None)) if not attribute.startswith("_") else None
            sentence = " ".join((doc or "").split(". ")[0].split())
            if 3 <= len(sentence.split()) <= 20 and not set(re.findall(r"[a-z]+", sentence.lower())) & music:
                found.add(sentence)
    return sorted(found)


@functools.lru_cache(maxsize=2)
def common_words(tokenizer: Path) -> list[str]:
    """Whole words (4+ letters) among a WordPiece tokenizer's first 12,000 pieces (BERT's are
    roughly by frequency), without a music word."""
    vocabulary = json.loads(Path(tokenizer).read_text(encoding="utf-8"))["model"]["vocab"]
    music = music_words()
    return [w for w, i in sorted(vocabulary.items(), key=lambda item: item[1])
            if i < 12000 and re.fullmatch(r"[a-z]{4,}", w) and w not in music]


@functools.lru_cache(maxsize=1)
def music_words() -> frozenset[str]:
    """Every word of the prompt generators' vocabulary tables."""
    words = set()
    for table in phrasing.SYNONYMS.values():
        for phrases in table.values():
            for phrase in phrases:
                words.update(re.findall(r"[a-z]+", phrase.lower()))
    words.update(w for name in FAMILIES for w in re.findall(r"[a-z]+", name))
    return frozenset(words | {"music", "song", "track", "tune", "melody", "beat", "sound", "audio", "note", "notes"})


def band_tempo(asserts: dict) -> dict:
    """The assertion with a BPM as the tempo band it falls in (the reader's vocabulary)."""
    out = {k: v for k, v in asserts.items() if k != "tempo_bpm"}
    if "tempo_bpm" in asserts:
        out.setdefault("tempo", tempo_word(asserts["tempo_bpm"]))
    return out


def audio_targets(heard: list[RealAttributes], vocabulary: dict) -> dict:
    families = vocabulary["instrument"]
    targets = {"families": torch.tensor([[float(f in h.families) for f in families] for h in heard])}
    for kind in vocabulary:
        if kind != "instrument":
            values = [h.kind_value(kind) for h in heard]   # a recording's tag may name a genre no prompt has
            targets[kind] = torch.tensor([vocabulary[kind].index(v) if v in vocabulary[kind] else UNLABELLED for v in values])
    return targets


def text_targets(asserts: list[dict], vocabulary: dict) -> dict:
    families = vocabulary["instrument"]
    targets = {"music": torch.tensor([float(bool(a)) for a in asserts]),
               "instrument": torch.tensor([float("instrument" in a) for a in asserts]),
               "families": torch.tensor([[float(f in a.get("instrument", ())) for f in families] for a in asserts])}
    for kind in vocabulary:
        if kind != "instrument":   # class 0: the prompt does not say
            targets[kind] = torch.tensor([1 + vocabulary[kind].index(a[kind]) if kind in a else 0 for a in asserts])
    return targets


def _audio_outputs(reader, frames, mask):
    families, kinds = reader.audio_logits(frames, mask)
    return {"families": families, **kinds}


def _text_outputs(reader, tokens):
    music, instrument, families, kinds = reader.text_logits(*tokens)
    return {"music": music, "instrument": instrument, "families": families, **kinds}


def _fit(outputs, targets: dict, reader, steps: int, seed: int, penalised=(), l2: float = 0.0) -> dict:
    """Full-batch Adam on the summed losses of `outputs()` against `targets` (+ l2 * the squared
    `penalised` weights); -> training accuracy per output (families: exact set, only where an
    instrument is named on the text side)."""
    names = list(targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = [p for p in reader.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = sum(_loss(name, logits, targets) for name, logits in outputs().items() if name in names)
            loss = loss + l2 * sum(w.pow(2).sum() for w in penalised)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return {name: _accuracy(name, logits, targets) for name, logits in outputs().items() if name in names}


def _loss(name: str, logits, targets: dict) -> torch.Tensor:
    target = targets[name]
    if name == "families" and "instrument" in targets:   # text: families only where one is named
        named = targets["instrument"] > 0
        return F.binary_cross_entropy_with_logits(logits[named], target[named]) if named.any() else logits.sum() * 0
    if target.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


def _accuracy(name: str, logits, targets: dict) -> float:
    target = targets[name]
    if name == "families":
        rows = targets["instrument"] > 0 if "instrument" in targets else torch.ones(len(target), dtype=torch.bool)
        exact = ((logits[rows] > 0).float() == target[rows]).all(-1)
        return round(float(exact.float().mean()), 3)
    if target.dtype.is_floating_point:
        return round(float(((logits > 0).float() == target).float().mean()), 3)
    known = target != UNLABELLED
    return round(float((logits[known].argmax(-1) == target[known]).float().mean()), 3)


def embed_prompts(model, texts: list[str], batch: int = 256, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt's mean token through the frozen text encoder, as a one-token sequence and its
    mask (what the reader's masked mean of the tokens gives)."""
    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    pooled = torch.cat([model.embed_texts(chunk) for chunk in tqdm(chunks, desc="prompts", unit="batch",
                                                                   disable=not progress, leave=False)])
    return pooled[:, None, :], torch.ones(len(texts), 1, dtype=torch.bool)
