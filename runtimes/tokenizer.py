"""Text to model inputs with the artifact's bundled `tokenizers` file: no transformers needed at run time.

Texts are tokenized once without padding; batches are padded afterwards with numpy, so a caller can group texts of
similar length and pad each group only to its own longest member. The unpadded encodings are `tokenizers.Encoding`s:
their `offsets`, `word_ids` and `sequence_ids` map tokens back to the text for the task-level methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UsageError

TRUNCATION = ("truncate", "error")


class TextEncoder:
    """Encodes texts (or text pairs) into int64 arrays named after the model's inputs."""

    def __init__(self, path: str | Path, spec: dict[str, Any]):
        from tokenizers import Tokenizer

        self.max_length = int(spec["max_length"])
        self.pad_id = int(spec["pad_id"])
        self.input_names = tuple(spec["input_names"])
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(self.max_length)

    def tokenize(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, truncation: str = "truncate"
    ) -> list[Any]:
        """Unpadded encodings of texts, or of (text, pair) when pairs are given.

        truncation="truncate" cuts inputs at max_length (see `truncated`); "error" raises UsageError instead, naming
        how many inputs are too long.
        """
        check_truncation(truncation)
        _check_texts(texts, "texts")
        if pairs is None:
            encodings = self._tok.encode_batch(list(texts))
        else:
            _check_texts(pairs, "pairs")
            if len(pairs) != len(texts):
                raise UsageError(f"got {len(texts)} texts but {len(pairs)} pairs — pass one pair per text")
            encodings = self._tok.encode_batch(list(zip(texts, pairs)))
        if truncation == "error":
            cut = truncated(encodings)
            if cut:
                raise UsageError(
                    f"{len(cut)} of {len(encodings)} input(s) are longer than this model's max length of "
                    f"{self.max_length} tokens (first: index {cut[0]}) — shorten them, or pass truncation='truncate'"
                )
        return encodings

    def pad(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Stack encodings into [batch, longest] arrays: pad id, attention mask 0 and token type 0 past each end."""
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: columns[name] for name in self.input_names}

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Encode one batch, padded to its longest member."""
        return self.pad(self.tokenize(texts, pairs))


def truncated(encodings: Sequence[Any]) -> list[int]:
    """Indices of the encodings that were cut at max_length (the tokenizer keeps what it cut as `overflowing`)."""
    return [i for i, e in enumerate(encodings) if e.overflowing]


def check_truncation(truncation: Any) -> str:
    """A valid truncation mode, or UsageError listing them."""
    if truncation not in TRUNCATION:
        raise UsageError(f"unknown truncation {truncation!r} — choose from: {', '.join(TRUNCATION)}")
    return truncation


def _check_texts(texts: Any, what: str) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise UsageError(f"{what} must be a list of strings, got {type(texts).__name__} — wrap a single text in [ ]")
    if len(texts) == 0:
        raise UsageError(f"{what} is empty — pass at least one string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UsageError(f"{what}[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str — pass strings only")
    for i, text in enumerate(texts):
        # A lone surrogate (e.g. from bytes decoded with errors="surrogateescape") is not Unicode text: the Rust
        # tokenizer would reject it with an unrelated TypeError.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UsageError(
                f"{what}[{i}] is not valid Unicode (lone surrogate at character {exc.start}) — decode input bytes "
                "with errors='replace', or remove the surrogate"
            ) from None
