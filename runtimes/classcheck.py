"""`python -m bertship.runtimes.classcheck ARTIFACT BACKEND [--golden-only] [--threads N]`: check one backend of an artifact in this
process and print one JSON line {cpu_class, report, failures}; never raises for a failed check. Torch-free.

The export runs it in a fresh process on another CPU class's kernels (exporter.gate.cross_class_checks), where the
class is set before the runtime starts (ONEDNN_MAX_CPU_ISA, qemu). --golden-only leaves out the length sweep, for
emulations too slow for it (the golden texts in their batches, alone and among other batch-mates, as load() re-checks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import artifact, cpuclass
from .errors import BertshipError
from .verify import backend_checks, read_golden, read_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertship.runtimes.classcheck")
    parser.add_argument("artifact", type=Path)
    parser.add_argument("backend")
    parser.add_argument("--golden-only", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    root, backend, golden_only = args.artifact, args.backend, args.golden_only
    from .model import load

    try:
        model = load(root, backend=backend, threads=args.threads, recheck=False)
        manifest = artifact.read_manifest(root)
        feeds, refs, texts, _ = read_golden(root, manifest)
        report, failures = backend_checks(model.runner, manifest, feeds, refs, texts,
                                          None if golden_only else read_sweep(root))
    except BertshipError as exc:
        report, failures = {}, [str(exc)]
    print(json.dumps({"cpu_class": cpuclass.runtime_class(backend), "report": report, "failures": failures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
