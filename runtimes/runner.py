"""The small protocol every backend runner implements; the contract tests hold both runners to it."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    """Runs one compiled model. `run` must be safe to call from several threads at once."""

    backend: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    precision: str  # the precision the backend reports it actually computes in, e.g. "fp32", "f32", "bf16"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; feeds are keyed by input name, results by output name (fresh arrays the caller owns)."""
        ...
