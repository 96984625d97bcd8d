"""This project's reproducible benchmarks, with their torch-needing baselines and stock-tool builders: not part of the
installed package. Run from the checkout root, e.g. `python -m benchmarks.embed_fidelity --out benchmarks/results`.

The benchmarks start their workers as `python -m benchmarks.<name>` in fresh processes; the checkout root is put on
their PYTHONPATH here so that works from any working directory.
"""

import os
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
