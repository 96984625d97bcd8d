"""Embedding recipes as apps use them: speed against sentence-transformers and the per-text tail, in one run.

    pip install -e '.[all,anchors]'
    python -m benchmarks.embed_fidelity --out benchmarks/results

1. Texts nobody tuned on: the MR test split and a seeded sample of the Amazon review snippets (both from the
   vaderSentiment 3.3.2 sdist on PyPI). The recipes calibrate on bertship's bundled text, or (one variant) on the MR
   dev split: never on the texts reported.
2. Baseline: sentence-transformers `encode` (torch fp32, batch 32) = 1.0x; its vectors are the reference.
3. Every variant embeds the texts in its own process (benchmarks/embed_worker.py): `load(ART).embed(texts,
   batch_size=32)` for bertship, the same batching for the stock tools' files; each text also alone. Per variant:
   sentences/s as a ratio to sentence-transformers measured in the same run, per-text cosine (the lower of batched
   and alone) mean / 1st percentile / min, alone-vs-batched min, and the 20 worst texts.
4. The MR classifier (MiniLM fine-tuned on the MR train split) exported under the same recipes: test accuracy as
   % of fp32.
Writes embed_fidelity.json (raw rates, cosines, machine), embed_fidelity.md and embed_fidelity.png.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bertship.profiles import cpu_info
from bertship.profiles.machine import package_versions

from .mr_data import CACHE, _sdist, split

WORK = CACHE / "embed"
MAX_FOREIGN = 0.15  # a worker whose timing saw other processes use more of the CPU than this is run again
RETRIES = 2
AMAZON = 1500  # seeded sample of the 3,708 Amazon review snippets

# name -> (recipe, backend, export options); int8-mixed at several targets draws the speed/tail frontier
PLANS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("fp32", "fp32", "onnxruntime", {}),
    ("fp32", "fp32", "openvino", {}),
    ("bf16", "bf16", "openvino", {}),
    ("int8-weight-only", "int8-weight-only", "openvino", {}),
    ("int8-dynamic (batch-dependent, allowed)", "int8-dynamic", "onnxruntime", {"allow_batch_dependence": True}),
    ("int8-static", "int8-static", "onnxruntime", {}),
    ("int8-static (nncf)", "int8-static", "openvino", {}),
    ("int8-mixed 0.99", "int8-mixed", "onnxruntime", {"min_cosine": 0.99}),
    ("int8-mixed 0.99", "int8-mixed", "openvino", {"min_cosine": 0.99}),
    ("int8-mixed 0.98", "int8-mixed", "openvino", {"min_cosine": 0.98}),
    ("int8-mixed 0.97", "int8-mixed", "openvino", {"min_cosine": 0.97}),
    ("int8-mixed 0.99, calibrated on MR dev", "int8-mixed", "openvino", {"min_cosine": 0.99, "calibration": "dev"}),
]
# --quick: the recipes that can lead, and sentence-transformers' own backends; no classifier, no earlier anchors
QUICK = ("fp32", "bf16", "int8-static (nncf)", "int8-mixed 0.99")
# the MR classifier under the recipes a classifier would use (int8-mixed judged on agreement, its default)
CLASSIFIER_PLANS = [("fp32", "onnxruntime"), ("bf16", "openvino"), ("int8-weight-only", "openvino"),
                    ("int8-static", "openvino"), ("int8-dynamic", "onnxruntime"), ("int8-mixed", "openvino"),
                    ("int8-mixed", "onnxruntime")]


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def amazon(n: int = AMAZON, seed: int = 0) -> list[str]:
    """A seeded sample of the Amazon review snippets of the same sdist (Hutto & Gilbert 2014)."""
    with tarfile.open(_sdist(CACHE)) as outer:
        inner = outer.extractfile(next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")))
        with tarfile.open(fileobj=io.BytesIO(inner.read())) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("amazonReviewSnippets_GroundTruth.txt"))
            raw = tar.extractfile(member).read().decode("latin-1")
    texts = [cols[2].strip() for line in raw.splitlines() if len(cols := line.split("\t")) >= 3 and cols[2].strip()]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def build(plans, source: Path, task: str, root: Path, calibration: Path) -> dict[str, tuple[Path, str]]:
    """bertship artifacts, built once under `root`: variant name -> (artifact, backend). Refusals are reported."""
    from bertship.exporter import export

    out = {}
    for name, recipe, backend, extra in plans:
        path = root / f"{name}-{backend}".replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        extra = dict(extra)
        if extra.get("calibration") == "dev":
            extra["calibration"] = str(calibration)
        if not (path / "manifest.json").exists():
            _log(f"build {name} [{backend}] ({task})")
            start = time.time()
            try:
                export(source, out=path, task=task, recipe=recipe, backends=backend, force=True,
                       log=lambda m: None, **extra)
            except Exception as exc:  # a refused recipe is a result of the benchmark
                _log(f"  refused: {exc}")
                root.mkdir(parents=True, exist_ok=True)
                path.with_name(path.name + ".refused").write_text(str(exc))
                continue
            (path.parent / (path.name + ".build_s")).write_text(f"{time.time() - start:.1f}")
        out[f"bertship {name} [{backend}]"] = (path, backend)
    return out


def run(cmd: list[str]) -> dict[str, Any]:
    """One worker process; re-run while other processes loaded the CPU during its timing, keep the least loaded."""
    tries = []
    while len(tries) <= RETRIES:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:5])}: {res.stderr.strip()[-1500:]}")
        tries.append(json.loads(res.stdout))
        load = tries[-1].get("foreign_load")
        if load is None or load <= MAX_FOREIGN:
            break
        _log(f"other processes used {load:.0%} of the CPU during the timing — measuring again")
    return min(tries, key=lambda r: r.get("foreign_load") or 0.0)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def measure(variants: dict[str, tuple[Path, str]], texts_file: Path, texts: list[str], tok_from: Path,
            passes: int) -> dict[str, Any]:
    """sentence-transformers and every variant in their own processes, `passes` interleaved passes."""
    from bertship.exporter.load import default_model_path

    ref_file = WORK / "st.npy"
    results: dict[str, Any] = {}
    rng = random.Random(0)
    names = ["sentence-transformers encode (fp32)", *variants]
    for p in range(passes):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            _log(f"pass {p + 1}/{passes}: {name}")
            vec = WORK / "vec"
            if variants.get(name, (None, None))[1] == "st":
                cmd = [sys.executable, "-m", "benchmarks.st_backends", "embed", "--work", str(WORK / "st"),
                       "--variant", name, "--texts", str(texts_file), "--vectors-out", str(vec)]
            elif name.startswith("sentence-transformers"):
                cmd = [sys.executable, "-m", "benchmarks.baselines", str(default_model_path()), "--encode",
                       str(texts_file), "--vectors-out", str(ref_file), "--threads", "2", "--rounds", "2"]
            else:
                path, backend = variants[name]
                cmd = [sys.executable, "-m", "benchmarks.embed_worker", "--model", str(path), "--backend", backend,
                       "--tokenizer-from", str(tok_from), "--texts", str(texts_file), "--vectors-out", str(vec)]
            r = run(cmd)
            if name in results:
                results[name]["sent_per_s"] += r["sent_per_s"]
                results[name]["foreign_loads"] += r["foreign_loads"]
                continue
            results[name] = r
            if name != "sentence-transformers encode (fp32)":
                r["vectors"] = (np.load(f"{vec}.batched.npy"), np.load(f"{vec}.alone.npy"))
    reference = np.load(ref_file)
    base = float(np.median(results["sentence-transformers encode (fp32)"]["sent_per_s"]))
    for name, r in results.items():
        r["median_sent_per_s"] = float(np.median(r["sent_per_s"]))
        r["x_sentence_transformers"] = r["median_sent_per_s"] / base
        if "vectors" in r:
            batched, alone = r.pop("vectors")
            per_text = np.minimum(_cos(batched, reference), _cos(alone, reference))
            invariance = _cos(alone, batched)
            worst = np.argsort(per_text)[:20]
            r.update(cosine_mean=float(per_text.mean()), cosine_p1=float(np.percentile(per_text, 1)),
                     cosine_min=float(per_text.min()), batch_cosine_min=float(invariance.min()),
                     worst=[{"text": texts[i], "cosine": float(per_text[i])} for i in worst])
    return results


def classifier_accuracy(data: dict[str, list[tuple[str, int]]]) -> dict[str, Any]:
    """The MR classifier under each recipe: accuracy on the test split, as % of fp32 (in this process: not timed)."""
    from benchmarks.baselines import finetune
    from bertship.runtimes import load
    from bertship.runtimes.evaluate import evaluate, read_eval_data

    clf = finetune(data["train"], CACHE / "mr-minilm")
    test = WORK / "mr-test.tsv"
    names = ("negative", "positive")
    test.write_text("".join(f"{t.replace(chr(9), ' ')}\t{names[y]}\n" for t, y in data["test"]), encoding="utf-8")
    plans = [(r, r, b, {}) for r, b in CLASSIFIER_PLANS]
    built = build(plans, clf, "sequence-classification", WORK / "classifier", test)
    out = {}
    for name, (path, backend) in built.items():
        model = load(path, backend=backend)
        result = evaluate(model, read_eval_data(test, model.task, model.manifest["task"]["id2label"]))
        out[name] = {"accuracy": result["accuracy"], "n": result["n"],
                     "kept_float": model.manifest.get("fallback", {}).get(backend, {}).get("kept_float")}
    base = out.get("bertship fp32 [onnxruntime]", {}).get("accuracy")
    for r in out.values():
        r["pct_of_fp32"] = 100 * r["accuracy"] / base if base else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embed_fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="re-render the .md and .png from the JSON in --out")
    parser.add_argument("--quick", action="store_true", help="only the recipes that can lead (QUICK) and "
                        "sentence-transformers' own backends; written as embed_fidelity_quick.*")
    args = parser.parse_args(argv)
    stem = "embed_fidelity_quick" if args.quick else "embed_fidelity"
    if args.report_only:
        results = json.loads((args.out / f"{stem}.json").read_text())
        (args.out / f"{stem}.md").write_text(markdown(results))
        plot(results, args.out / f"{stem}.png")
        return 0
    from benchmarks.anchors import build_anchors
    from bertship.exporter.calibration import read_texts
    from bertship.exporter.load import default_model_path

    start = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    data = split()
    texts = [t for t, _ in data["test"]] + amazon()
    texts_file = WORK / "texts.txt"
    texts_file.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    dev = WORK / "mr-dev.txt"
    dev.write_text("".join(t.replace("\n", " ") + "\n" for t, _ in data["dev"][:300]), encoding="utf-8")
    plans = [p for p in PLANS if p[0] in QUICK] if args.quick else PLANS
    variants = build(plans, default_model_path(), "sentence-embedding", WORK / "artifacts", dev)
    if not args.quick:
        variants.update(build_anchors(default_model_path(), read_texts(None)[0], "feature-extraction",
                                      WORK / "anchors", _log))
    from benchmarks import st_backends

    calib = WORK / "st-calibration.txt"
    calib.write_text("".join(t + "\n" for t in read_texts(None)[0]), encoding="utf-8")
    _log("build sentence-transformers' backends")
    st_status = st_backends.build(WORK / "st", calib)
    variants.update({name: (WORK / "st", "st") for name, ok in st_status.items() if ok == "ok"})
    tok_from = WORK / "artifacts" / "fp32-onnxruntime"
    emb = measure(variants, texts_file, texts, tok_from, args.passes)
    for name, (path, backend) in variants.items():
        if backend != "st" and path.is_dir():
            manifest = json.loads((path / "manifest.json").read_text())
            build_s = path.with_name(path.name + ".build_s")
            emb[name]["export_s"] = float(build_s.read_text()) if build_s.exists() else None
            emb[name]["kept_float"] = next(iter(manifest.get("fallback", {}).values()), {}).get("kept_float")
            emb[name]["groups"] = next(iter(manifest.get("fallback", {}).values()), {}).get("groups")
    from bertship.runtimes.cpuclass import flags_class

    results = {
        "benchmark": stem, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_class": flags_class(),
        "stock_not_built": {k: v for k, v in st_status.items() if v != "ok"},
        "command": "python -m benchmarks.embed_fidelity " + " ".join(argv or sys.argv[1:]),
        "machine": cpu_info(), "packages": package_versions(("onnxruntime", "openvino", "nncf", "torch",
                                                              "sentence-transformers")),
        "threads": 2, "texts": {"mr_test": len(data["test"]), "amazon": AMAZON},
        "refused": {p.name: p.read_text() for p in WORK.rglob("*.refused")},
        "embeddings": emb, "classifier": {} if args.quick else classifier_accuracy(data),
        "minutes": (time.time() - start) / 60,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    plot(results, args.out / f"{stem}.png")
    print(markdown(results))
    return 0


TARGET = {"x": 4.5, "min": 0.99, "batch": 0.999}  # issue 11's aim


def markdown(r: dict[str, Any]) -> str:
    """The table (× sentence-transformers, tail, invariance, classifier % of fp32), the target, the worst texts."""
    cpu = r["machine"]
    emb, clf = r["embeddings"], r["classifier"]
    lines = [f"Machine: {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores; {' '.join(cpu['flags'])}; CPU class "
             f"{r.get('cpu_class', 'not recorded')}), "
             f"{r['threads']} threads; {r['created']}; `{r['command']}` ({r['minutes']:.0f} min).", "",
             f"Texts: MR test split ({r['texts']['mr_test']}) + Amazon review snippets ({r['texts']['amazon']}), "
             "none used for tuning. Speed: sentences/s of `embed(texts, batch_size=32)` (median of the rounds of "
             "two interleaved passes, each variant in its own process) over sentence-transformers' `encode` in the "
             "same run. Cosine: each text's vector vs sentence-transformers', the lower of batched and alone.", "",
             "| variant | × sentence-transformers | sent/s | cosine mean | cosine p1 | cosine min | alone vs batched "
             "min | MR classifier % of fp32 | size MB | float groups | meets the aim |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in sorted(emb.items(), key=lambda kv: -kv[1]["x_sentence_transformers"]):
        if "cosine_min" not in v:
            lines.append(f"| {name} | 1.00 | {v['median_sent_per_s']:.0f} | 1 | 1 | 1 | — | — | — | — | baseline |")
            continue
        recipe_key = name.split(" [")[0].replace("bertship ", "").split(" 0.9")[0].split(" (")[0].split(",")[0]
        backend = name.split("[")[-1].rstrip("]") if "[" in name else ""
        c = clf.get(f"bertship {recipe_key} [{backend}]", {})
        pct = f"{c['pct_of_fp32']:.1f} %" if c.get("pct_of_fp32") is not None else "—"
        kept = f"{len(v['kept_float'])} of {v['groups']}" if v.get("kept_float") is not None and v.get("groups") else "—"
        meets = (v["x_sentence_transformers"] >= TARGET["x"] and v["cosine_min"] >= TARGET["min"]
                 and v["batch_cosine_min"] >= TARGET["batch"])
        lines.append(f"| {name} | {v['x_sentence_transformers']:.2f} | {v['median_sent_per_s']:.0f} | "
                     f"{v['cosine_mean']:.5f} | {v['cosine_p1']:.5f} | {v['cosine_min']:.5f} | "
                     f"{v['batch_cosine_min']:.5f} | {pct} | {v['size_bytes'] / 1e6:.1f} | {kept} | "
                     f"{'yes' if meets else 'no'} |")
    faithful = [(n, v) for n, v in emb.items() if v.get("cosine_min", 0) >= TARGET["min"]
                and v.get("batch_cosine_min", 0) >= TARGET["batch"]]
    best = max(faithful, key=lambda kv: kv[1]["x_sentence_transformers"], default=None)
    lines += ["", f"Aim (issue 11): ≥ {TARGET['x']}× sentence-transformers at min cosine ≥ {TARGET['min']} and alone vs "
              f"batched ≥ {TARGET['batch']}. "
              + (f"Fastest variant that keeps that fidelity here: {best[0]} at {best[1]['x_sentence_transformers']:.2f}×."
                 if best else "No variant keeps that fidelity here.")]
    stock = {n: v for n, v in emb.items() if n.startswith("sentence-transformers ") and "cosine_min" in v}
    ours = [(n, v) for n, v in faithful if n.startswith("bertship")]
    if stock and ours:
        lead_name, lead = max(ours, key=lambda kv: kv[1]["x_sentence_transformers"])
        rival_name, rival = max(stock.items(), key=lambda kv: kv[1]["x_sentence_transformers"])
        ratio = lead["x_sentence_transformers"] / rival["x_sentence_transformers"]
        lines += ["", f"Aim (issue 20): the fastest bertship variant at that fidelity beats every sentence-transformers "
                  f"backend by ≥ 1.3×, whatever their fidelity: {lead_name} {lead['x_sentence_transformers']:.2f}× vs "
                  f"{rival_name} {rival['x_sentence_transformers']:.2f}× = **{ratio:.2f}×** "
                  f"({'met' if ratio >= 1.3 else 'missed'})."]
    for name, why in r.get("stock_not_built", {}).items():
        lines.append(f"- not measured: {name}: {why[:300]}")
    if clf:
        lines += ["", "MR classifier (test accuracy, each recipe exported from the fine-tuned classifier):", "",
                  "| variant | accuracy | % of fp32 | float groups |", "|---|---|---|---|"]
    for name, c in clf.items():
        kept = ", ".join(k["group"] for k in c["kept_float"]) if c.get("kept_float") else "—"
        lines.append(f"| {name} | {c['accuracy']:.4f} | {c['pct_of_fp32']:.1f} % | {kept} |")
    if r.get("refused"):
        lines += ["", "Refused by the export gate:", ""] + [f"- {k}: {v[:300]}" for k, v in r["refused"].items()]
    lines += ["", "The 20 worst texts of each int8 variant (cosine vs sentence-transformers):", ""]
    for name, v in emb.items():
        if "worst" in v and "int8" in name or "nncf" in name or "Quant" in name:
            lines.append(f"- **{name}**: " + "; ".join(f"{w['text'][:60]!r} {w['cosine']:.4f}" for w in v.get("worst", [])))
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> Path | None:
    """Speed (× sentence-transformers) against the per-text tail (min and 1st percentile), the aim shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, key, title in ((axes[0], "cosine_min", "lowest per-text cosine"),
                           (axes[1], "cosine_p1", "1st-percentile per-text cosine")):
        for name, v in r["embeddings"].items():
            if key not in v:
                continue
            invariant = v["batch_cosine_min"] >= TARGET["batch"]
            ax.scatter(1 - v[key], v["x_sentence_transformers"], marker="o" if invariant else "x",
                       color="C0" if name.startswith("bertship") else "C1")
            ax.annotate(name.replace("bertship ", ""), (1 - v[key], v["x_sentence_transformers"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.axvspan(1e-6, 1 - TARGET["min"], ymin=0, ymax=1, color="green", alpha=0.06)
        ax.axhline(TARGET["x"], color="green", lw=0.8, ls="--")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel(f"1 − {title} (log; left is more faithful)")
        ax.set_title(title)
    axes[0].set_ylabel("× sentence-transformers (sentences/s)")
    fig.suptitle("MiniLM embeddings on MR test + Amazon snippets: speed vs tail fidelity "
                 "(o: same vector alone and batched, x: batch-dependent; blue bertship, orange stock tools)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
