"""The app-facing model: load an artifact (checksums first), run feeds, or encode text with the bundled tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import artifact, backends
from .errors import UsageError
from .runner import Runner
from .tokenizer import TextEncoder


class Model:
    """A loaded artifact on one backend. Safe to share between threads."""

    def __init__(self, root: Path, manifest: dict[str, Any], runner: Runner, encoder: TextEncoder):
        self.root = root
        self.manifest = manifest
        self.runner = runner
        self.tokenizer = encoder
        self.task: str = manifest["task"]["name"]
        self.backend: str = runner.backend
        self.precision: str = runner.precision
        self.input_names: tuple[str, ...] = tuple(i["name"] for i in manifest["signature"]["inputs"])
        self.outputs: list[dict[str, Any]] = manifest["signature"]["outputs"]
        self.output_names: tuple[str, ...] = tuple(o["name"] for o in self.outputs)
        self.max_length: int = encoder.max_length

    def __repr__(self) -> str:
        return f"Model({str(self.root)!r}, task={self.task!r}, backend={self.backend!r}, precision={self.precision!r})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch of already-tokenized inputs: {input name: int array [batch, sequence]}."""
        return self.runner.run(self._checked(feeds))

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 32
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Tokenize and run texts (or text pairs) in input order; the task's output, or a dict when it has several.

        Texts are grouped by token length so each batch is padded only to its own longest member; outputs with a
        sequence axis come back padded with zeros to the longest text of the whole call.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, got {batch_size!r}")
        encodings = self.tokenizer.tokenize(texts, pairs)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        longest = max(len(e.ids) for e in encodings)
        results: dict[str, np.ndarray] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            outs = self.runner.run(self.tokenizer.pad([encodings[i] for i in chunk]))
            for spec in self.outputs:
                name, value = spec["name"], outs[spec["name"]]
                if name not in results:
                    shape = list(value.shape)
                    shape[0] = len(encodings)
                    if len(spec["axes"]) > 1 and spec["axes"][1] == "sequence":
                        shape[1] = longest
                    results[name] = np.zeros(shape, dtype=value.dtype)
                target = results[name]
                if len(spec["axes"]) > 1 and spec["axes"][1] == "sequence":
                    target[chunk, : value.shape[1]] = value
                else:
                    target[chunk] = value
        return results[self.output_names[0]] if len(results) == 1 else results

    def _checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise UsageError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise UsageError(
                f"feeds have wrong names (missing {missing}, unexpected {extra}) — this model takes {list(self.input_names)}"
            )
        out = {}
        shape = None
        for name in self.input_names:
            arr = np.asarray(feeds[name])
            if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
                raise UsageError(f"input {name!r} has shape {arr.shape} — pass a non-empty [batch, sequence] array")
            if not np.issubdtype(arr.dtype, np.integer):
                raise UsageError(f"input {name!r} has dtype {arr.dtype} — pass integer token ids / masks")
            if shape is not None and arr.shape != shape:
                raise UsageError(f"input {name!r} has shape {arr.shape} but {self.input_names[0]!r} has {shape}")
            shape = arr.shape
            out[name] = np.ascontiguousarray(arr, dtype=np.int64)
        if shape[1] > self.max_length:
            raise UsageError(
                f"sequence length {shape[1]} exceeds this model's max length {self.max_length} — truncate the inputs"
            )
        return out


def load(path: str | Path, backend: str | None = None, threads: int | None = None) -> Model:
    """Load an artifact: verify the checksums of the files this backend needs, then start the backend.

    `backend` defaults to the first backend recorded in the manifest that is installed here.
    """
    root = Path(path)
    manifest = artifact.read_manifest(root)
    built = list(manifest.get("backends", {}))
    if backend is None:
        installed = [b for b in built if b in backends.BACKENDS and backends.is_installed(b)]
        if not installed:
            backends.require(built[0] if built else "onnxruntime")  # raises, naming the extra to install
        backend = installed[0]
    backends.get_backend(backend)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive int or None, got {threads!r}")
    needed = artifact.backend_files(manifest, backend)
    artifact.check_files(root, manifest, only=needed)
    entry = manifest["backends"][backend]
    runner = backends.runner_class(backend)(root / entry["model"], threads, entry.get("options"))
    encoder = TextEncoder(root / artifact.TOKENIZER, manifest["tokenizer"])
    return Model(root, manifest, runner, encoder)
