"""Export memory and time by model size: randomly initialised encoders from MiniLM-L6 to XLM-R large.

    python -m benchmarks.export_memory --out benchmarks/results [--sizes minilm-l6 bert-base bert-large xlmr-large]

For each size, a model with random weights is saved with save_pretrained (safetensors) and a tokenizer of its kind;
then, each in its own process: `bertship export` per recipe (its per-stage peak RSS and wall time from the manifest,
the whole process's peak from wait4), the artifact's size per backend, `bertship verify`, and `load()` + one
`embed` per backend (wall time and peak RSS). Peaks are given as multiples of the fp32 weight size and checked against
the targets: export ≤ 4 × weights + 1.5 GB, load ≤ 1.5 × the model file + 150 MB.
Writes export_memory.json (raw numbers, machine), export_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bertship.profiles import cpu_info

SIZES: dict[str, dict[str, Any]] = {
    "minilm-l6": {"family": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                  "intermediate_size": 1536, "vocab_size": 30522},
    "bert-base": {"family": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "vocab_size": 30522},
    "bert-large": {"family": "bert", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096, "vocab_size": 30522},
    "xlmr-large": {"family": "xlm-roberta", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096, "vocab_size": 250002},
}
RECIPES = ("fp32", "int8-static", "int8-weight-only")
VARIANTS = tuple(f"{r}@external" for r in RECIPES)  # weights in model.onnx.data even under 2 GB (load maps them)
GB = 1024.0  # MB per GB


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def make_model(name: str, folder: Path) -> Path:
    """A randomly initialised encoder of that size with a tokenizer of its kind (WordPiece from the bundled MiniLM for
    BERT; a byte-level BPE trained on the shipped sentences for XLM-R, ids inside the 250,002 vocabulary)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, XLMRobertaConfig

    from bertship.exporter.load import default_model_path

    spec = dict(SIZES[name])
    family = spec.pop("family")
    torch.manual_seed(0)
    if family == "bert":
        config = BertConfig(max_position_embeddings=512, **spec)
        tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    else:
        config = XLMRobertaConfig(max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, **spec)
        tokenizer = _bpe_tokenizer()
    model = AutoModel.from_config(config).eval()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.rename(tmp, folder)
    return folder


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    from bertship.exporter.golden import sentences

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(sentences() * 20, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)


def child(cmd: list[str]) -> dict[str, Any]:
    """Run a command; wall seconds and its own peak RSS (wait4), or its error."""
    import tempfile

    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:  # files, not pipes: no full-pipe stall
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out = fout.read().decode(errors="replace")
        err = ferr.read().decode(errors="replace")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1), "exit": code,
            "stdout": out[-4000:], "error": err.strip().splitlines()[-1][-500:] if code and err.strip() else None}


VERIFY = """
import json, sys
from bertship.cli import main
from bertship.profiles.machine import peak_rss_mb
code = main(["verify", sys.argv[1]])
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
sys.exit(code)
"""
LOAD = """
import json, sys, time
from bertship.profiles.machine import peak_rss_mb
from bertship.runtimes import load
start = time.perf_counter()
m = load(sys.argv[1], backend=sys.argv[2])
loaded = time.perf_counter() - start
m.embed(["A first query.", "Why?"])
print(json.dumps({"load_s": loaded, "peak_rss_mb": peak_rss_mb()}))
"""


def weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def measure(name: str, root: Path, recipes: tuple[str, ...] = RECIPES) -> dict[str, Any]:
    folder = root / "models" / name
    if not (folder / "config.json").exists():  # built in a child, so this process stays small for the ones it times
        made = child([sys.executable, "-c", "import sys; from benchmarks.export_memory import make_model; "
                      "from pathlib import Path; make_model(sys.argv[1], Path(sys.argv[2]))", name, str(folder)])
        if made["exit"] != 0:
            raise SystemExit(f"building {name} failed: {made['error']}")
    w = weights_mb(folder)
    row: dict[str, Any] = {"size": name, "weights_mb": round(w, 1), "recipes": {}}
    _log(f"{name}: {w:.0f} MB of fp32 weights")
    for recipe in recipes:
        out = root / "artifacts" / f"{name}-{recipe}"
        shutil.rmtree(out, ignore_errors=True)
        _log(f"{name}: export --recipe {recipe}")
        base, _, variant = recipe.partition("@")  # "<recipe>@external": the same with --external-data always
        ex = child([sys.executable, "-m", "bertship.cli", "export", str(folder), "--task", "feature-extraction",
                    "--recipe", base, "--out", str(out)] + (["--external-data", "always"] if variant else []))
        rec: dict[str, Any] = {"export": {k: ex[k] for k in ("wall_s", "peak_rss_mb", "exit", "error")}}
        if ex["exit"] == 0:
            manifest = json.loads((out / "manifest.json").read_text())
            rec["stages_s"] = manifest.get("timings_s")
            rec["stages_peak_rss_mb"] = manifest.get("peak_rss_mb")
            rec["backends"] = {}
            for backend, entry in manifest["backends"].items():
                size = sum((out / f).stat().st_size for f in entry["files"]) / 2**20
                model_mb = (out / entry["model"]).stat().st_size / 2**20
                ld = child([sys.executable, "-c", LOAD, str(out), backend])
                info = json.loads(ld["stdout"].strip().splitlines()[-1]) if ld["exit"] == 0 else {}
                # the child's own high-water mark: wait4's ru_maxrss carries the parent's across fork + exec
                rec["backends"][backend] = {"files": entry["files"], "artifact_mb": round(size, 1),
                                            "model_file_mb": round(model_mb, 1),
                                            "load": {**ld, **info, "stdout": None}}
            vf = child([sys.executable, "-c", VERIFY, str(out)])
            own = json.loads(vf["stdout"].strip().splitlines()[-1]) if vf["stdout"].strip() else {}
            rec["verify"] = {**{k: vf[k] for k in ("wall_s", "peak_rss_mb", "exit", "error")}, **own}
            shutil.rmtree(out, ignore_errors=True)
        else:
            _log(f"{name}: export --recipe {recipe} failed: {ex['error']}")
        row["recipes"][recipe] = rec
    return row


def export_peak(rec: dict[str, Any]) -> float:
    """The export's peak RSS: the largest stage peak. (wait4's figure alone falls short: the per-stage reset of the
    high-water mark, /proc/self/clear_refs, resets what the kernel reports at exit too.)"""
    return max([rec["export"]["peak_rss_mb"], *(rec.get("stages_peak_rss_mb") or {}).values()])


def targets(row: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on this row."""
    w = row["weights_mb"]
    export_cap = 4 * w + 1.5 * GB
    out: dict[str, Any] = {"export_cap_mb": round(export_cap, 1), "export": {}, "load": {}}
    for recipe, rec in row["recipes"].items():
        peak = export_peak(rec)
        out["export"][recipe] = {"peak_mb": peak, "x_weights": round(peak / w, 2), "met": rec["export"]["exit"] == 0
                                 and peak <= export_cap}
        for backend, b in (rec.get("backends") or {}).items():
            # load counts the files the runtime reads: the graph plus its external data or .bin
            cap = 1.5 * b["artifact_mb"] + 150
            lp = b["load"].get("peak_rss_mb")
            out["load"][f"{recipe}/{backend}"] = {"peak_mb": lp, "cap_mb": round(cap, 1),
                                                  "met": lp is not None and lp <= cap}
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Export memory and time by model size ({r['created']})", "",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['machine']['memory_gb']} GB. "
             "Commands: " + "; ".join(f"`{c}`" for c in r.get("commands", [])) + ". "
             "Random weights. Export peak: the largest per-stage peak in the manifest (each stage's own high-water "
             "mark); load and verify peaks: the child process's own VmHWM. Targets from issue 15.", "",
             "| model | fp32 weights | recipe | export wall | export peak RSS | × weights | target ≤ 4×w+1.5 GB | "
             "slowest stage | artifact (ORT / OV) | verify | load peak ORT / OV (target) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(r["rows"], key=lambda row: row["weights_mb"]):
        t = row["targets"]
        for recipe, rec in row["recipes"].items():
            ex = rec["export"]
            if ex["exit"] != 0:
                lines.append(f"| {row['size']} | {row['weights_mb']:.0f} MB | {recipe} | failed (exit {ex['exit']}) | "
                             f"{ex['peak_rss_mb'] / GB:.2f} GB | | | | | | {ex['error']} |")
                continue
            stages = rec.get("stages_s") or {}
            slow = max(stages, key=stages.get) if stages else "-"
            b = rec.get("backends", {})
            sizes = " / ".join(f"{b[k]['artifact_mb']:.0f} MB" for k in ("onnxruntime", "openvino") if k in b)
            loads = " / ".join(f"{b[k]['load'].get('peak_rss_mb', float('nan')):.0f} MB "
                               f"({'met' if t['load'][f'{recipe}/{k}']['met'] else 'missed'})"
                               for k in ("onnxruntime", "openvino") if k in b)
            te = t["export"][recipe]
            lines.append(f"| {row['size']} | {row['weights_mb']:.0f} MB | {recipe} | {ex['wall_s']:.0f} s | "
                         f"{te['peak_mb'] / GB:.2f} GB | {te['x_weights']:.1f} | "
                         f"{'met' if te['met'] else 'missed'} ({t['export_cap_mb'] / GB:.2f} GB) | "
                         f"{slow} {stages.get(slow, 0):.0f} s | {sizes} | {rec['verify']['wall_s']:.0f} s | {loads} |")
    lines += ["", "Per-stage peak RSS (GB) and wall time (s), fp32 recipe:", "",
              "| model | " + " | ".join(("load", "export", "optimize", "build", "verify", "package")) + " |",
              "|---|" + "---|" * 6]
    for row in sorted(r["rows"], key=lambda row: row["weights_mb"]):
        rec = row["recipes"].get("fp32", {})
        p, s = rec.get("stages_peak_rss_mb") or {}, rec.get("stages_s") or {}
        cells = [f"{p[k] / GB:.2f} GB, {s[k]:.0f} s" if k in p else "-"
                 for k in ("load", "export", "optimize", "build", "verify", "package")]
        lines.append(f"| {row['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.cache/export_memory"))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES + VARIANTS))
    parser.add_argument("--append", action="store_true",
                        help="add to the JSON's rows (a size measured again keeps its other recipes)")
    parser.add_argument("--report-only", action="store_true", help="re-render the markdown from the JSON")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "export_memory.json"
    if args.report_only:
        results = json.loads(path.read_text())
        for row in results["rows"]:
            row["targets"] = targets(row)
    else:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        results = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": [],
                   "machine": {"cpu": cpu_info()["model"], "cores": os.cpu_count(), "memory_gb": mem_gb,
                               "python": platform.python_version()}, "rows": []}
        if args.append and path.exists():
            results = json.loads(path.read_text())
        results.setdefault("commands", []).append("python -m benchmarks.export_memory " + " ".join(argv or sys.argv[1:]))
        for name in args.sizes:
            row = measure(name, args.work, tuple(args.recipes))
            old = next((r for r in results["rows"] if r["size"] == name), None)
            if old is None:
                results["sizes"].append(name)
                results["rows"].append(row)
            else:
                old["recipes"].update(row["recipes"])
                row = old
            row["targets"] = targets(row)
            path.write_text(json.dumps(results, indent=1) + "\n")  # what is done so far survives a later failure
    (args.out / "export_memory.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
