"""This project's reproducible benchmarks, with their torch-needing baselines and stock-tool builders: not part of the
installed package. Run them from the checkout root, e.g. `python -m benchmarks.embed_fidelity --out benchmarks/results`:
they start their workers as `python -m benchmarks.<name>` in fresh processes, which find this folder from there.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout root, for workers started from another folder
