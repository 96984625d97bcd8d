"""Every recipe on every newer encoder family, as the export gate judges it: tiny random classifiers of ELECTRA, MPNet,
DeBERTa-v3 and ModernBERT (tests/tiny.py configs), each recipe on the backends that have it.

What it shows is which recipes build and pass the gate per family, and the cosine and argmax agreement each backend
keeps against PyTorch fp32 on the golden texts. Random tiny models have near-tied logits, so agreement here is a
harsh test, not an accuracy; base-size latency and fidelity are in benchmarks/families.py.

    python -m benchmarks.family_recipes --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FAMILIES = ("electra", "mpnet", "deberta-v2", "modernbert")
RECIPES = (("fp16", None), ("bf16", ("openvino",)), ("int8-dynamic", ("onnxruntime",)), ("int8-static", None),
           ("int8-weight-only", None), ("int8-mixed", None))


def run_one(folder: Path, recipe: str, backends: tuple[str, ...] | None, out: Path) -> dict[str, Any]:
    """Export one recipe; the gate's per-backend numbers, or the refusal's message."""
    from bertship.exporter import export

    start = time.perf_counter()
    try:
        export(folder, out=out, recipe=recipe, log=lambda _: None, **({"backends": backends} if backends else {}))
    except Exception as exc:  # the gate's refusal (or any failure) is the finding: keep its message
        return {"status": "refused", "error": type(exc).__name__, "message": str(exc),
                "seconds": time.perf_counter() - start}
    manifest = json.loads((out / "manifest.json").read_text())
    per_backend = {}
    for backend, record in manifest["fidelity"]["backends"].items():
        outputs = record["outputs"]
        per_backend[backend] = {"precision": record.get("precision"),
                                "cosine_min": min(o["cosine_min"] for o in outputs),
                                "argmax_agreement": min(o["argmax_agreement"] for o in outputs
                                                        if o.get("argmax_agreement") is not None)}
    return {"status": "passed", "backends": per_backend, "seconds": time.perf_counter() - start}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Tiny random sequence classifiers (tests/tiny.py), 3 labels; `{result['command']}`; {result['created']}; "
             f"{result['machine']}. Numbers are the export gate's, on its golden texts vs PyTorch fp32.", "",
             "| family | recipe | result | backend: cosine min / argmax agreement | export s |", "|---|---|---|---|---|"]
    for family, rows in result["families"].items():
        for recipe, r in rows.items():
            if r["status"] == "passed":
                cells = "; ".join(f"{b}: {v['cosine_min']:.4f} / {v['argmax_agreement']:.3f}"
                                  for b, v in r["backends"].items())
                lines.append(f"| {family} | {recipe} | passed | {cells} | {r['seconds']:.0f} |")
            else:
                lines.append(f"| {family} | {recipe} | **refused** | `{r['message'][:200]}` | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import tiny

    from bertship.profiles import cpu_info

    cpu = cpu_info()
    result: dict[str, Any] = {"command": "python -m benchmarks.family_recipes --out " + str(args.out),
                              "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                              "machine": f"{cpu.get('model')} ({platform.machine()}, {cpu.get('cores')} cores)",
                              "families": {}}
    work = Path(tempfile.mkdtemp(prefix="family-recipes-"))
    try:
        for family in FAMILIES:
            folder = tiny.save(family, "sequence-classification", work / f"{family}-src")
            rows = result["families"][family] = {}
            for recipe, backends in RECIPES:
                print(f"[family_recipes] {family} {recipe} …", flush=True)
                rows[recipe] = run_one(folder, recipe, backends, work / f"{family}-{recipe}")
                print(f"[family_recipes]   {rows[recipe]['status']} in {rows[recipe]['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "family_recipes.json").write_text(json.dumps(result, indent=1))
    (args.out / "family_recipes.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
