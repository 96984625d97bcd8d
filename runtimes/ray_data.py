"""The bertship runtime inside Ray Data: a callable class for `Dataset.map_batches`, one loaded model per actor.

    import ray
    from bertship.runtimes.ray_data import Embed
    ds = ray.data.from_items([{"text": t} for t in texts])
    ds = ds.map_batches(Embed, fn_constructor_args=("artifacts/minilm",), fn_constructor_kwargs={"threads": 1},
                        compute=ray.data.ActorPoolStrategy(size=2), batch_size=256, num_cpus=1)
    vectors = np.stack(ds.to_pandas()["embedding"])      # or ds.write_parquet(...)

Ray is not imported here: Ray Data constructs the class once per actor (so the model loads once per actor) and calls
it with each batch as a dict of numpy columns. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .model import load


class Embed:
    """map_batches callable: adds one float32 vector per row of `column` as `output` (what `Model.embed` gives)."""

    def __init__(self, path: str | Path, column: str = "text", output: str = "embedding", threads: int | None = 1,
                 backend: str | None = None, batch_size: int = 32):
        # threads=1 by default: Ray runs one actor per CPU it is given, so each model should use that one CPU.
        self.model = load(path, backend=backend, threads=threads)
        self.column, self.output, self.batch_size = column, output, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with `output` added: [rows, hidden] float32, rows in batch order."""
        if self.column not in batch:
            raise UsageError(f"the batch has no column {self.column!r} (it has {', '.join(batch)}) — pass "
                             "fn_constructor_kwargs={'column': NAME}")
        texts = [str(t) for t in np.asarray(batch[self.column]).reshape(-1)]
        return {**batch, self.output: self.model.embed(texts, batch_size=self.batch_size)}
