"""Prompt tokenisation with a `tokenizers` fast tokenizer (no transformers needed).

Training, export and the runtime all tokenise through this class, so the ids a model was
trained on are exactly the ids the runtime feeds it.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np

from .bundle import BundleError
from .errors import one_line as _one_line

PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>")
_SURROGATE = re.compile("[\ud800-\udfff]")


class PromptError(ValueError):
    """A prompt that cannot be scored (empty, not a string)."""


class PromptTokenizer:
    def __init__(self, tokenizer_file: str | Path, max_tokens: int):
        from tokenizers import Tokenizer

        self.path = Path(tokenizer_file)
        self.max_tokens = int(max_tokens)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as error:   # tokenizers raises a bare Exception for a malformed file
            raise BundleError(f"{self.path}: not a readable tokenizers file ({_one_line(error)})") from None
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self.pad_id = self._find_pad_id()

    def _find_pad_id(self) -> int:
        for token in PAD_CANDIDATES:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return 0

    @staticmethod
    def check(prompt, name: str = "prompt") -> str:
        if not isinstance(prompt, str):
            raise PromptError(f"{name}: prompt must be a string, got {type(prompt).__name__}")
        surrogate = _SURROGATE.search(prompt)
        if surrogate:
            raise PromptError(f"{name}: prompt holds a lone surrogate (U+{ord(surrogate.group()):04X} at "
                              f"character {surrogate.start()}), which is not text")
        if all(_invisible(char) for char in prompt):
            raise PromptError(f"{name}: empty prompt")
        return prompt

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """prompts -> input_ids, attention_mask, both int64 [B, L] (L = longest, <= max_tokens)."""
        encodings = self._tokenizer.encode_batch([self.check(p) for p in prompts])
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return ids, mask


# Characters that draw nothing although Unicode files them as letters, symbols or marks: the
# Hangul fillers (U+115F, U+1160, U+3164, U+FFA0), the braille blank (U+2800), the combining
# grapheme joiner (U+034F), Khmer's inherent vowels (U+17B4, U+17B5), the Mongolian free
# variation selectors and vowel separator (U+180B-U+180F) and the variation selectors
# (U+FE00-U+FE0F, U+E0100-U+E01EF): a prompt of these alone is as empty as one of spaces.
_FILLERS = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0"
                      "\U000e0100-\U000e01ef]")


def _invisible(char: str) -> bool:
    """Whitespace, control and format characters (zero-width joiners, BOMs) and the blank
    fillers above carry no words."""
    return (char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp")
            or _FILLERS.match(char) is not None)


