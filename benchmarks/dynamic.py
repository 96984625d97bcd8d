"""Dynamic inference on the MR classifier: early exit and token elimination against the dense artifacts.

    python -m benchmarks.dynamic --out benchmarks/results

The MiniLM classifier the quantization benchmark fine-tunes (benchmarks.baselines.finetune, cached) gets off-ramps
after layers 1-5 (`bertship exits`, distilled on the train split, the rule calibrated on the dev split at 1 %), then
is exported under fp32, int8-dynamic (ONNX Runtime) and int8-static (OpenVINO) beside the same recipes of the dense
model, each backend's exit rule calibrated on dev from its own segments (--exit-calibration). Token elimination: the
schedule `bertship tokens` searches on dev, and keep 0.5^layer recovered by distillation, exported the same way.
Both together: off-ramps trained on the searched schedule's folder (`bertship exits` on it), exported like early exit.
Every export of the early-exit folder is gated on the test split at the calibrated limit; one the gate refuses
is exported again with the limit lifted, measured, and reported as refused. Every variant is scored on the test split
(1,057 sentences, never tuned on) and timed by benchmarks/dynamic_worker.py in its own process, two passes
interleaved: one text alone (p50) and the whole split in length-sorted batches of 32 (texts/s). Writes dynamic.json,
dynamic.md and dynamic.png (the exit-layer histograms and the speed/accuracy points).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bertship.profiles import cpu_info

from .mr_data import CACHE, split, write_tsv

WORK = CACHE / "dynamic"
RECIPES = (("fp32", "onnxruntime", "ORT"), ("int8-dynamic", "onnxruntime", "ORT"), ("int8-static", "openvino", "OpenVINO"))


def _log(msg: str) -> None:
    print(f"[dynamic] {msg}", file=sys.stderr, flush=True)


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    _log("bertship " + " ".join(args[:2]) + " …")
    return subprocess.run([sys.executable, "-m", "bertship.cli", *args], capture_output=True, text=True)


def build(clf: Path, exits: Path, dev: Path, test: Path) -> tuple[dict[str, tuple[Path, str]], dict[str, str]]:
    variants, refused = {}, {}
    for recipe, backend, label in RECIPES:
        dense = WORK / f"dense-{recipe}-{backend}"
        if not (dense / "manifest.json").exists():
            res = _cli(["export", str(clf), "--recipe", recipe, "--backends", backend, "--out", str(dense), "--force"])
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
        variants[f"dense {recipe} ({label})"] = (dense, backend)
        art, name = WORK / f"exits-{recipe}-{backend}", f"early exit {recipe} ({label})"
        if _exit_export(exits, art, name, recipe, backend, dev, test, refused):
            variants[name] = (art, backend)
    return variants, refused


def _exit_export(folder: Path, art: Path, name: str, recipe: str, backend: str, dev: Path, test: Path,
                 refused: dict[str, str]) -> bool:
    """Export an early-exit folder (each backend's rule calibrated on its own segments on dev; gated on test) unless
    cached. One the gate refuses at the calibrated limit is exported again with the limit lifted, measured, and
    reported in `refused` (also on later runs: refused.txt beside it). False: nothing to measure (the chain itself
    misses PyTorch)."""
    if not (art / "manifest.json").exists():
        args = ["export", str(folder), "--recipe", recipe, "--backends", backend, "--eval-data", str(test),
                "--exit-calibration", str(dev), "--out", str(art), "--force"]
        res = _cli(args)
        if res.returncode == 4:
            refused[name] = res.stderr.strip().splitlines()[-1]
            res = _cli(args + ["--max-accuracy-drop", "99%"])
            if res.returncode == 4:
                refused[name] = res.stderr.strip().splitlines()[-1]
                return False
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        if name in refused:
            (art / "refused.txt").write_text(refused[name] + "\n")
    elif (art / "refused.txt").exists():
        refused[name] = (art / "refused.txt").read_text().strip()
    return True


def build_tokens(clf: Path, train: Path, dev: Path, test: Path, steps: int) -> dict[str, tuple[Path, str]]:
    """Token elimination: the schedule `bertship tokens` searches on dev at 1 %, and an aggressive one (keep
    0.5^layer) recovered by distillation on train; each exported like the dense model."""
    folders = {"searched": (WORK / "mr-tokens", []),
               f"keep 0.5^l + {steps} recovery steps": (WORK / f"mr-tokens-rec{steps}",
                                                          ["--schedule", "0.5,0.25,0.125,0.0625,0.0313", "--data",
                                                           str(train), "--recover-steps", str(steps),
                                                           "--max-accuracy-drop", "99%"])}
    variants = {}
    for tag, (folder, extra) in folders.items():
        if not (folder / "tokens.json").exists():
            res = _cli(["tokens", str(clf), "--eval-data", str(dev), "--out", str(folder), "--force", *extra])
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
            _log(res.stdout.strip())
        for recipe, backend, label in RECIPES:
            art = WORK / f"{folder.name}-{recipe}-{backend}"
            if not (art / "manifest.json").exists():
                res = _cli(["export", str(folder), "--recipe", recipe, "--backends", backend, "--out", str(art),
                            "--force"])
                if res.returncode != 0:
                    _log(f"tokens {tag} {recipe}: refused: {res.stderr.strip().splitlines()[-1]}")
                    continue
            variants[f"tokens {tag} {recipe} ({label})"] = (art, backend)
            WORK_OF[f"tokens {tag} {recipe} ({label})"] = folder.name
    return variants


WORK_OF: dict[str, str] = {}  # token variant -> the folder its schedule is in


def build_both(train: Path, dev: Path, test: Path) -> tuple[dict[str, tuple[Path, str]], dict[str, str]]:
    """Both together: off-ramps after layers 1-5 trained and calibrated (dev, 1 %) on the kept tokens of the searched
    schedule's folder (`bertship exits` on `mr-tokens`), exported and gated like the early-exit folder."""
    tokens, both = WORK / "mr-tokens", WORK / "mr-both"
    if not (both / "exits.json").exists():
        res = _cli(["exits", str(tokens), "--data", str(train), "--eval-data", str(dev), "--out", str(both), "--force"])
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        _log(res.stdout.strip())
    variants, refused = {}, {}
    for recipe, backend, label in RECIPES:
        art, name = WORK / f"both-{recipe}-{backend}", f"both {recipe} ({label})"
        if _exit_export(both, art, name, recipe, backend, dev, test, refused):
            variants[name] = (art, backend)
    return variants, refused


def both_work(histogram: dict[str, int], schedule: list[float], total: int) -> float:
    """The layer work of texts that left after the layers in `histogram` under a token schedule: a text leaving
    after layer L did layer 1 on all its tokens and layer l > 1 on the share kept after layer l - 1."""
    done = sum(n * (1.0 + sum(schedule[:int(layer) - 1])) for layer, n in histogram.items())
    return done / (sum(histogram.values()) * total)


def embeddings(data: dict[str, list[tuple[str, int]]], passes: int) -> dict[str, Any]:
    """Token elimination on the bundled all-MiniLM-L6-v2 as sentence embeddings: one schedule searched at
    --min-cosine 0.99 on dev sentences and dev paragraphs (8 consecutive MR sentences joined, about 190 tokens), then
    measured per length on the test sentences and test paragraphs against the dense fp32 artifact."""
    from bertship.exporter.load import default_model_path

    def paragraphs(rows: list[tuple[str, int]]) -> list[str]:
        return [" ".join(t for t, _ in rows[i:i + 8]) for i in range(0, len(rows) - 7, 8)]

    folder = WORK / "emb"
    folder.mkdir(parents=True, exist_ok=True)
    sets = {"short": (data["dev"][:400], data["test"]), "long": (paragraphs(data["dev"]), paragraphs(data["test"]))}
    files = {}
    for kind, (dev, test) in sets.items():
        dev_texts = [t for t, _ in dev] if kind == "short" else dev
        test_texts = [t for t, _ in test] if kind == "short" else test
        files[kind] = (folder / f"dev-{kind}.txt", folder / f"test-{kind}.txt")
        files[kind][0].write_text("\n".join(dev_texts) + "\n", encoding="utf-8")
        files[kind][1].write_text("\n".join(test_texts) + "\n", encoding="utf-8")
    mixed = folder / "dev-mixed.txt"
    mixed.write_text(files["short"][0].read_text() + files["long"][0].read_text(), encoding="utf-8")
    base, tokens = default_model_path(), folder / "minilm-tokens"
    if not (tokens / "tokens.json").exists():
        res = _cli(["tokens", str(base), "--task", "sentence-embedding", "--eval-data", str(mixed), "--min-cosine",
                    "0.99", "--max-length", "256", "--out", str(tokens), "--force"])
        if res.returncode == 2 and "no schedule" in res.stderr:  # none holds 0.99: measure keep 0.9^l for its cost
            searched = res.stderr.strip().splitlines()
            _log("no schedule holds --min-cosine 0.99; measuring keep 0.9^layer instead")
            res = _cli(["tokens", str(base), "--task", "sentence-embedding", "--eval-data", str(mixed), "--schedule",
                        "0.9,0.81,0.729,0.6561,0.5905", "--min-cosine", "0.01", "--max-length", "256", "--out",
                        str(tokens), "--force"])
            (folder / "search.log").write_text("\n".join(searched) + "\n", encoding="utf-8")
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        _log(res.stdout.strip())
    log = folder / "search.log"
    arts = {"dense fp32 (ORT)": (base, folder / "dense-fp32"), "tokens fp32 (ORT)": (tokens, folder / "tokens-fp32")}
    for name, (src, art) in arts.items():
        if not (art / "manifest.json").exists():
            res = _cli(["export", str(src), "--task", "sentence-embedding", "--backends", "onnxruntime", "--out",
                        str(art), "--force"])
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
    out: dict[str, Any] = {"schedule": json.loads((tokens / "tokens.json").read_text()), "results": {},
                           "search_at_0.99": log.read_text().splitlines() if log.exists() else None}
    for p in range(passes):
        for kind in sets:
            for name, (_, art) in arts.items():
                _log(f"embeddings pass {p + 1}/{passes}: {name}, {kind} texts")
                cmd = [sys.executable, "-m", "benchmarks.dynamic_worker", str(art), "--backend", "onnxruntime",
                       "--data", str(files[kind][1]), "--reference", str(arts["dense fp32 (ORT)"][1])]
                res = subprocess.run(cmd + (["--no-score"] if p else []), capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(res.stderr[-2000:])
                r = json.loads(res.stdout)
                key = f"{name} / {kind}"
                prev = out["results"].setdefault(key, {**r, "passes": []})
                prev["passes"].append(r["b32_texts_per_s"])
    for r in out["results"].values():
        r["b32_texts_per_s"] = statistics.median(r["passes"])
    return out


def measure(variants: dict[str, tuple[Path, str]], test: Path, passes: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rng = random.Random(0)
    for p in range(passes):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            path, backend = variants[name]
            _log(f"pass {p + 1}/{passes}: {name}")
            cmd = [sys.executable, "-m", "benchmarks.dynamic_worker", str(path), "--backend", backend, "--data",
                   str(test)] + (["--no-score"] if p else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"{name}: {res.stderr[-2000:]}")
            r = json.loads(res.stdout)
            if name not in results:
                results[name] = {**r, "passes": []}
            results[name]["passes"].append({k: r[k] for k in ("b1_p50_ms", "b32_texts_per_s", "foreign_load")})
    for r in results.values():  # the median over passes
        r["b1_p50_ms"] = statistics.median(x["b1_p50_ms"] for x in r["passes"])
        r["b32_texts_per_s"] = statistics.median(x["b32_texts_per_s"] for x in r["passes"])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dynamic", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--skip-tokens", action="store_true", help="early exit only")
    p.add_argument("--only-embeddings", action="store_true", help="measure the sentence-embedding part and add it to "
                   "the existing dynamic.json (the classifier's variants as measured there)")
    p.add_argument("--recover-steps", type=int, default=400, help="recovery steps of the aggressive token schedule")
    args = p.parse_args(argv)
    from benchmarks.baselines import finetune

    start = time.time()
    data = split()
    if args.only_embeddings:
        record = json.loads((args.out / "dynamic.json").read_text())
        record["embeddings"] = embeddings(data, args.passes)
        record["command"] += " && python -m benchmarks.dynamic " + " ".join(argv or sys.argv[1:])
        _write(record, args.out)
        return 0
    clf = finetune(data["train"], CACHE / "mr-minilm")
    WORK.mkdir(parents=True, exist_ok=True)
    train, dev = write_tsv(data["train"], WORK / "train.tsv"), write_tsv(data["dev"], WORK / "dev.tsv")
    test = write_tsv(data["test"], WORK / "test.tsv")
    exits = WORK / "mr-exits"
    if not (exits / "exits.json").exists():
        res = _cli(["exits", str(clf), "--data", str(train), "--eval-data", str(dev), "--out", str(exits), "--force"])
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        _log(res.stdout.strip())
    variants, refused = build(clf, exits, dev, test)
    if not args.skip_tokens:
        variants.update(build_tokens(clf, train, dev, test, args.recover_steps))
        both, refused_both = build_both(train, dev, test)
        variants.update(both)
        refused.update(refused_both)
    results = measure(variants, test, args.passes)
    emb = embeddings(data, args.passes) if not args.skip_tokens else None
    tokens = {name: json.loads((WORK / name / "tokens.json").read_text()) for name in
              ("mr-tokens", f"mr-tokens-rec{args.recover_steps}") if (WORK / name / "tokens.json").exists()}
    for name, folder in WORK_OF.items():
        if name in results:
            results[name]["work"] = tokens[folder]["result"]["cost"]
            results[name]["schedule"] = tokens[folder]["schedule"]
    for name, r in results.items():
        if name.startswith("both "):
            r["schedule"] = tokens["mr-tokens"]["schedule"]
            r["work"] = round(both_work(r["exit_histogram"], r["schedule"], r["total_layers"]), 4)
    if (WORK / "mr-both" / "exits.json").exists():
        both_spec = json.loads((WORK / "mr-both" / "exits.json").read_text())
    record = {"benchmark": "dynamic", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python -m benchmarks.dynamic " + " ".join(argv or sys.argv[1:]), "machine": cpu_info(),
              "threads": 2, "minutes": round((time.time() - start) / 60, 1), "test_texts": len(data["test"]),
              "exits": json.loads((exits / "exits.json").read_text()), "tokens": tokens, "embeddings": emb,
              "both": both_spec if not args.skip_tokens else None,
              "refused": refused,
              "variants": results}
    _write(record, args.out)
    return 0


def _write(record: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dynamic.json").write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    (out / "dynamic.md").write_text(text)
    plot(record, out / "dynamic.png")
    print(text)


def _best_dense(variants: dict[str, Any]) -> str:
    dense = [k for k in variants if k.startswith("dense int8")]
    return max(dense, key=lambda k: variants[k]["b32_texts_per_s"])


def markdown(record: dict[str, Any]) -> str:
    v = record["variants"]
    best = _best_dense(v)
    fp32 = v["dense fp32 (ORT)"]
    b = v[best]
    m = record["machine"]
    ex = record["exits"]
    cal = ex["calibration"]
    lines = [f"Machine: {m.get('model')} ({' '.join(f for f in m.get('flags', []) if 'vnni' in f or 'amx' in f or f == 'avx2')}), "
             f"{record['threads']} threads; {record['created']}; `{record['command']}` ({record['minutes']} min)", "",
             f"MR test split, {record['test_texts']} sentences (never tuned on). Off-ramps after layers "
             f"{','.join(map(str, ex['layers']))} of {cal['layers']}, distilled on the train split; rule "
             f"{ex['rule']} calibrated on the dev split ({cal['texts']} sentences) at ≤ "
             f"{cal['max_accuracy_drop'] * 100:g} % relative accuracy drop "
             f"(entropy: {cal['measured'].get('entropy', {}).get('mean_layers', '—')} layers, patience: "
             f"{cal['measured'].get('patience', {}).get('mean_layers', '—')} layers on dev). Best dense int8 "
             f"artifact by batch-32 throughput: **{best}**.", "",
             "Layer work: the share of the dense model's layer work a text does on average (early exit: mean layers "
             "run / layers; token elimination: tokens per layer / tokens, as `bertship tokens` counts it).", "",
             "| variant | accuracy | Δ vs fp32 (points) | Δ vs best dense int8 | layer work | b1 p50 ms | b1 × best "
             "dense int8 | b32 texts/s | b32 × best dense int8 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in v.items():
        work = r.get("work") or (r["mean_layers"] / r["total_layers"] if r.get("mean_layers") is not None else 1.0)
        lines.append(f"| {name}{' (gate refused)' if name in record['refused'] else ''} | {r['accuracy']:.4f} | "
                     f"{(r['accuracy'] - fp32['accuracy']) * 100:+.1f} | {(r['accuracy'] - b['accuracy']) * 100:+.1f} | "
                     f"{work:.2f} | {r['b1_p50_ms']:.2f} | {b['b1_p50_ms'] / r['b1_p50_ms']:.2f}× | "
                     f"{r['b32_texts_per_s']:.0f} | {r['b32_texts_per_s'] / b['b32_texts_per_s']:.2f}× |")
    for folder, spec in record.get("tokens", {}).items():
        res = spec["result"]
        searched = ", ".join("keep {:g}^l: {:.4f}".format(t["schedule"][0], t["accuracy"]) for t in spec["search"])
        lines += ["", f"Token schedule `{folder}`: keeps {spec['schedule']} after layers 1-{len(spec['schedule'])}; on "
                  f"dev accuracy {res['accuracy']:.4f} (full {spec['judged_on']['full_model']['accuracy']:.4f})"
                  + (f", after {spec['recovery']['steps']} recovery steps" if spec.get("recovery") else
                     f"; searched on dev: {searched}")]
    for name, why in record["refused"].items():
        lines += ["", f"Gate refusal of {name} at the calibrated limit: {why}"]
    lines += ["", "Exit layers on the test split (texts leaving after each layer):", "",
              "| variant | " + " | ".join(f"layer {k}" for k in [*map(str, ex['layers']), str(cal['layers'])]) + " |",
              "|---|" + "---|" * (len(ex["layers"]) + 1)]
    for name, r in v.items():
        if r.get("exit_histogram"):
            lines.append(f"| {name} | " + " | ".join(str(x) for x in r["exit_histogram"].values()) + " |")
    lines += ["", "Where a batch-32 pass spends its time (rows each segment was given, its ms over the pass):", "",
              "| variant | " + " | ".join(f"seg → {s['layer']}" for s in next(r for r in v.values()
                                                                          if r.get("segments"))["segments"]) + " |",
              "|---|" + "---|" * (len(ex["layers"]) + 1)]
    for name, r in v.items():
        if r.get("segments"):
            lines.append(f"| {name} | " + " | ".join(f"{s['rows']} rows, {s['ms']:.0f} ms ({s['ms_per_row']:.3f}/row)"
                                                    for s in r["segments"]) + " |")
    both = record.get("both")
    if both:
        bc = both["calibration"]
        lines += ["", f"Both together (`mr-both`: `bertship exits` on `mr-tokens`): off-ramps after layers "
                  f"{','.join(map(str, both['layers']))} trained and calibrated on the kept tokens of schedule "
                  f"{both['tokens_schedule']}; rule {both['rule']} on dev at ≤ {bc['max_accuracy_drop'] * 100:g} % "
                  f"against the model with its schedule (dev accuracy {bc['full_accuracy']:.4f}; entropy "
                  f"{bc['measured'].get('entropy', {}).get('mean_layers', '—')} layers, patience "
                  f"{bc['measured'].get('patience', {}).get('mean_layers', '—')} layers). Layer work of a both row: "
                  "tokens per layer of the layers each text ran, over the dense model's."]
    for kind, prefix, aim in (("early exit", "early exit int8", 1.6), ("token elimination", "tokens", 1.5),
                              ("both together", "both int8", 2.0)):
        ok = [n for n in v if n.startswith(prefix) and "int8" in n and n not in record["refused"]
              and (b["accuracy"] - v[n]["accuracy"]) * 100 <= 1.0]
        top = max(ok, key=lambda n: v[n]["b32_texts_per_s"]) if ok else None
        ratio = v[top]["b32_texts_per_s"] / b["b32_texts_per_s"] if top else None
        lines += ["", f"Aim: {kind} ≥ {aim}× the best dense int8 artifact's batch-32 throughput at ≤ 1 point accuracy "
                  "drop: " + (f"{'met' if ratio >= aim else 'missed'} — {top}: {ratio:.2f}× at "
                              f"{(v[top]['accuracy'] - b['accuracy']) * 100:+.1f} points vs {best}." if top else
                              f"no {kind} int8 variant is within 1 point of the best dense int8 artifact.")]
    emb = record.get("embeddings")
    if emb:
        sched = emb["schedule"]
        how = ("searched at --min-cosine 0.99" if not emb.get("search_at_0.99") else
               "given (no schedule down to keep 0.95^layer held --min-cosine 0.99 on dev: "
               + "; ".join("keep {}^layer: cosine min {}".format(*m.groups()) for m in
                           (re.search(r"keep ([\d.]+)\^layer .*?cosine min (-?[\d.]+)", line)
                            for line in emb["search_at_0.99"]) if m) + ")")
        lines += ["", f"Sentence embeddings (bundled all-MiniLM-L6-v2): schedule {sched['schedule']} {how}, on dev "
                  f"sentences + paragraphs ({sched['result']['cost']:.2f} of the layer work); test texts, cosine "
                  "against the dense fp32 artifact:", "",
                  "| variant / texts | mean tokens | cosine min | cosine p1 | cosine mean | b32 texts/s | × dense |",
                  "|---|---|---|---|---|---|---|"]
        for key, r in emb["results"].items():
            kind = key.split(" / ")[1]
            dense = emb["results"][f"dense fp32 (ORT) / {kind}"]["b32_texts_per_s"]
            lines.append(f"| {key} | {r['mean_tokens']:.0f} | {r.get('cosine_min', 1):.4f} | "
                         f"{r.get('cosine_p1', 1):.4f} | {r.get('cosine_mean', 1):.5f} | {r['b32_texts_per_s']:.0f} | "
                         f"{r['b32_texts_per_s'] / dense:.2f}× |")
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = record["variants"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    hist = {n: r["exit_histogram"] for n, r in v.items() if r.get("exit_histogram")}
    width = 0.8 / max(len(hist), 1)
    for i, (name, h) in enumerate(hist.items()):
        a.bar([j + i * width for j in range(len(h))], list(h.values()), width, label=name)
    keys = list(next(iter(hist.values())))
    a.set_xticks([j + width * (len(hist) - 1) / 2 for j in range(len(keys))])
    a.set_xticklabels(keys)
    a.set_xlabel("layer the text left after (last: ran them all)")
    a.set_ylabel("test sentences")
    a.set_title("Exit layers on the MR test split")
    a.legend(fontsize=7)
    for name, r in v.items():
        marker = "o" if name.startswith("dense") else "^"
        b.scatter(r["b32_texts_per_s"], r["accuracy"], marker=marker)
        b.annotate(name, (r["b32_texts_per_s"], r["accuracy"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    b.set_xlabel("texts/s, batches of 32 (2 threads)")
    b.set_ylabel("accuracy (MR test)")
    b.set_title("Speed/accuracy: dense vs dynamic inference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
