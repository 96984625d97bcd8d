"""Which states should an int8 chain's off-ramps learn on? Measured on the early-exit artifacts benchmarks.dynamic built.

    python -m benchmarks.dynamic --out benchmarks/results      # first: builds the artifacts this reads
    python -m benchmarks.dynamic_ramps --out benchmarks/results

The MR MiniLM-L6 classifier's off-ramps (after layers 1-5) are distilled, as `bertship exits` does (exporter.exits:
make_ramps, distill, 30 epochs, KL at T=2 from the fp32 model's final logits), on the first-token states of the train
split as a chain computes them: the fp32 ONNX Runtime chain (what `bertship exits` trains on today), the int8-dynamic
chain's own segments, both, or the fp32 states with Gaussian noise. Each set of off-ramps is then calibrated
(exporter.exits.calibrate: cheapest rule within 1 % of the fp32 model's dev accuracy) on the dev split's states of the
chain it runs on, and scored on the test split (never tuned on): accuracy and mean layers, on the int8-dynamic chain
and on the fp32 one. No timing: the layer work follows from the mean layers (benchmarks.dynamic times the chains).
Writes dynamic_ramps.json and dynamic_ramps.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bertship.profiles import cpu_info

from .dynamic import WORK

LAYERS = [1, 2, 3, 4, 5]
TOTAL = 6
CHAINS = {"fp32": "exits-fp32-onnxruntime", "int8-dynamic": "exits-int8-dynamic-onnxruntime"}
TRAINED_ON = (("fp32", 0.0), ("fp32", 0.1), ("fp32", 0.3), ("int8-dynamic", 0.0), ("fp32+int8-dynamic", 0.0))


def _log(msg: str) -> None:
    print(f"[dynamic_ramps] {msg}", file=sys.stderr, flush=True)


def chain_states(art: Path, split: Path) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Run every segment of an early-exit artifact over a labelled split: per off-ramp layer the first-token state
    [N, hidden] the off-ramp reads, the final logits [N, labels] and the labels."""
    from bertship.runtimes import load
    from bertship.runtimes.evaluate import read_eval_data

    model = load(art, backend="onnxruntime")
    data = read_eval_data(split, "sequence-classification", model.manifest["task"].get("id2label") or {})
    enc = model.tokenizer.tokenize(data.texts)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].ids))
    chain = model.runner
    states: dict[int, np.ndarray] = {}
    final = None
    for s in range(0, len(order), 64):
        idx = order[s:s + 64]
        feeds = model.tokenizer.pad([enc[i] for i in idx])
        handed: dict[str, np.ndarray] = {}
        for k, seg in enumerate(chain.segments):
            out = chain.runners[k].run(chain._inputs(k, feeds, handed, None))
            if seg.get("hidden_out"):
                first = out[seg["hidden_out"]][:, 0]
                states.setdefault(seg["layer"], np.zeros((len(enc), first.shape[-1]), np.float32))[idx] = first
            else:
                if final is None:
                    final = np.zeros((len(enc), out["logits"].shape[-1]), np.float32)
                final[idx] = out["logits"]
            handed = chain._handed(seg, out)
    return states, final, np.asarray(data.labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dynamic_ramps", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    import torch

    from bertship.exporter.exits import calibrate, distill, make_ramps
    from bertship.runtimes import exits as rules

    missing = [a for a in CHAINS.values() if not (WORK / a / "manifest.json").exists()]
    if missing:
        raise SystemExit(f"no {', '.join(missing)} under {WORK} — run `python -m benchmarks.dynamic` first")
    start = time.time()
    states: dict[tuple[str, str], Any] = {}
    for chain, art in CHAINS.items():
        for split in ("train", "dev", "test"):
            _log(f"{chain} chain: states of the {split} split …")
            states[chain, split] = chain_states(WORK / art, WORK / f"{split}.tsv")
    teacher = torch.from_numpy(states["fp32", "train"][1])
    hidden = states["fp32", "train"][0][LAYERS[0]].shape[-1]
    labels = teacher.shape[-1]
    full = {split: float((states["fp32", split][1].argmax(-1) == states["fp32", split][2]).mean())
            for split in ("dev", "test")}
    rows = []
    for trained_on, noise in TRAINED_ON:
        _log(f"off-ramps on {trained_on} states" + (f" + noise {noise:g}" if noise else "") + " …")
        parts = trained_on.split("+")
        feats = {k: torch.from_numpy(np.concatenate([states[c, "train"][0][k] for c in parts])) for k in LAYERS}
        if noise:  # Gaussian noise scaled by each state's own spread
            gen = torch.Generator().manual_seed(0)
            feats = {k: v + noise * v.std() * torch.randn(v.shape, generator=gen) for k, v in feats.items()}
        ramps = make_ramps(LAYERS, hidden, labels)
        distill(ramps, feats, torch.cat([teacher] * len(parts)), 30, 1e-3, 32, 0, lambda _: None)
        for chain in CHAINS:
            logits = {}
            for split in ("dev", "test"):
                first, final, _ = states[chain, split]
                with torch.no_grad():
                    logits[split] = np.stack([ramps.ramps[str(k)](torch.from_numpy(first[k])).numpy()
                                              for k in LAYERS])
            _, dev_final, dev_y = states[chain, "dev"]
            cal = calibrate(logits["dev"], dev_final, list(dev_y), LAYERS, TOTAL, 0.01, full["dev"])
            _, test_final, test_y = states[chain, "test"]
            pred, layer = rules.apply_offline(cal["rule"], logits["test"], test_final, LAYERS, TOTAL)
            rows.append({"trained_on": trained_on, "noise": noise, "chain": chain, "rule": cal["rule"],
                         "test_accuracy": round(float((pred == test_y).mean()), 4),
                         "mean_layers": round(float(layer.mean()), 3),
                         "off_ramp_accuracy": [round(float((logits["test"][i].argmax(-1) == test_y).mean()), 3)
                                               for i in range(len(LAYERS))]})
            _log(f"  on the {chain} chain: {rules.describe(cal['rule'])}, test accuracy {rows[-1]['test_accuracy']}, "
                 f"mean layers {rows[-1]['mean_layers']}")
    record = {"benchmark": "dynamic_ramps", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python -m benchmarks.dynamic_ramps " + " ".join(argv or sys.argv[1:]),
              "machine": cpu_info(), "minutes": round((time.time() - start) / 60, 1),
              "full_model_accuracy": full, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dynamic_ramps.json").write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    (args.out / "dynamic_ramps.md").write_text(text)
    print(text)
    return 0


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [f"Machine: {m.get('model')}; {record['created']}; `{record['command']}` ({record['minutes']} min)", "",
             f"MR MiniLM-L6 classifier, off-ramps after layers {LAYERS} of {TOTAL}, rule calibrated on dev at 1 % "
             f"against the fp32 model (dev {record['full_model_accuracy']['dev']:.4f}); scored on test (fp32 model "
             f"{record['full_model_accuracy']['test']:.4f}).", "",
             "| off-ramps trained on | runs on | rule | test accuracy | mean layers | layer work | off-ramp accuracy "
             "(layers 1-5) |", "|---|---|---|---|---|---|---|"]
    from bertship.runtimes.exits import describe

    for r in record["rows"]:
        what = r["trained_on"] + (f" + noise {r['noise']:g}" if r["noise"] else "")
        lines.append(f"| {what} | {r['chain']} chain | {describe(r['rule'])} | {r['test_accuracy']:.4f} | "
                     f"{r['mean_layers']:.2f} | {r['mean_layers'] / TOTAL:.2f} | "
                     f"{' / '.join(f'{a:.3f}' for a in r['off_ramp_accuracy'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
