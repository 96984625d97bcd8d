"""Early exit (dynamic inference, Ganesh et al. §3.6): off-ramp classifiers after intermediate layers of a fine-tuned
sequence classifier, trained with the backbone frozen, and the exit rule calibrated on labelled held-out text.

Off-ramps (DeeBERT's "highways", Xin et al. 2020): one per chosen layer, Dense + tanh + Linear on the layer's first
token, as BERT's own pooler and classifier read the last layer. They are distilled from the model's final classifier
(FastBERT's self-distillation, Liu et al. 2020; DeeBERT's second stage): the backbone and its classifier are frozen, so
a text that runs every layer gets exactly the fine-tuned model's prediction. Since only the off-ramps learn, each
training text goes through the backbone once and the off-ramps train on the cached first-token states.

Exit rules, both measured on --eval-data (runtimes.exits applies them):
- entropy (DeeBERT): a text leaves at the first off-ramp whose softmax entropy, divided by log(labels), is below t;
- patience (PABEE, Zhou et al. 2020): a text leaves once `p` consecutive off-ramps after the first repeat its
  prediction.
For each rule the setting that runs the fewest layers on average while the accuracy stays within --max-accuracy-drop of
the full model's is kept, and of the two rules the cheaper one (both are recorded).

The folder written is the input folder (transformers loads it as before) plus exits.safetensors (the off-ramps) and
exits.json (layers, rule, calibration, training record); `bertship export` turns it into one graph per segment.

On a `bertship tokens` folder (exporter.tokens) both run together: the off-ramps are trained and calibrated on the
states of the tokens the schedule keeps (and judged against the model with its schedule), exits.json records the
schedule, and the export hands each segment's kept tokens and their mask to the next. The order is tokens, then exits:
a schedule added afterwards would change the states the off-ramps were trained on (refused at load).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bertship.runtimes import exits as rules
from bertship.runtimes.errors import SourceError, UsageError

EXITS_FILE = "exits.json"
RAMPS_FILE = "exits.safetensors"
FORMAT = 1
TEMPERATURE = 2.0  # distillation temperature (Hinton et al. 2015), as `prune --distill`


def num_layers(config: Any) -> int:
    for name in ("num_hidden_layers", "n_layers", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise SourceError("the model's config names no layer count (num_hidden_layers) — early exit needs one")


def hidden_width(config: Any) -> int:
    for name in ("hidden_size", "dim", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise SourceError("the model's config names no hidden size — early exit needs one")


def parse_layers(text: str | None, total: int) -> list[int]:
    """'2,4' -> [2, 4]: layers (1-based) after which an off-ramp reads; default every layer but the last."""
    if text is None or str(text).strip() == "":
        return list(range(1, total))
    try:
        layers = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--layers {text!r} is not a list of layer numbers — write e.g. --layers 2,4") from None
    bad = [x for x in layers if not 1 <= x < total]
    if not layers or bad:
        raise UsageError(f"--layers {text!r}: off-ramps go after layers 1 to {total - 1} of this {total}-layer model "
                         "(the last layer is the model's own classifier) — e.g. --layers 2,4")
    return layers


POOLINGS = ("cls", "cls+mean")
POOLED = {"cls": "first token", "cls+mean": "first token and the mean of its real tokens"}


def make_ramps(layers: list[int], hidden: int, labels: int, pooling: str = "cls"):
    """The off-ramps as one torch module: ramps[str(layer)] maps a layer's pooled state to logits. `pooling` "cls"
    reads the first token (as BERT's pooler); "cls+mean" the first token beside the mean of the real tokens."""
    import torch

    if pooling not in POOLINGS:
        raise UsageError(f"unknown off-ramp pooling {pooling!r} — choose from: {', '.join(POOLINGS)}")
    width = hidden * (2 if pooling == "cls+mean" else 1)

    class OffRamps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = list(layers)
            self.pooling = pooling
            self.ramps = torch.nn.ModuleDict({
                str(layer): torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.Tanh(),
                                                torch.nn.Linear(hidden, labels))
                for layer in layers})

        def features(self, state, mask):
            """One layer's [batch, tokens, hidden] state -> what its off-ramp reads."""
            if self.pooling == "cls":
                return state[:, 0]
            m = mask.unsqueeze(-1).to(state.dtype)
            return torch.cat([state[:, 0], (state * m).sum(1) / m.sum(1).clamp(min=1.0)], -1)

        def forward(self, hidden_states, mask):
            """hidden_states: transformers' tuple (embeddings, layer 1, …) or, under a token schedule, {layer: state};
            mask: the attention mask, or {layer: the mask of that layer's kept tokens}. The logits of every off-ramp,
            in order."""
            masks = mask if isinstance(mask, dict) else {layer: mask for layer in self.layers}
            return tuple(self.ramps[str(layer)](self.features(hidden_states[layer], masks[layer]))
                         for layer in self.layers)

    return OffRamps()


def read_exits(root: Path, config: Any) -> tuple[Any, dict[str, Any]] | None:
    """The off-ramps and exits.json of a folder written by `bertship exits` (None when it has neither)."""
    spec_path, ramps_path = root / EXITS_FILE, root / RAMPS_FILE
    if not spec_path.is_file() and not ramps_path.is_file():
        return None
    if not (spec_path.is_file() and ramps_path.is_file()):
        have, lack = (EXITS_FILE, RAMPS_FILE) if spec_path.is_file() else (RAMPS_FILE, EXITS_FILE)
        raise SourceError(f"{root} has {have} but no {lack} — re-run `bertship exits` to write both")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        layers, labels = [int(x) for x in spec["layers"]], int(spec["labels"])
        rules.check_rule(spec["rule"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UsageError) as exc:
        raise SourceError(f"{spec_path} is not an exits file bertship can read ({exc}) — re-run `bertship exits`") \
            from None
    if spec.get("format") != FORMAT:
        raise SourceError(f"{spec_path} has format {spec.get('format')!r}, this bertship reads {FORMAT} — re-run "
                          "`bertship exits`")
    total = num_layers(config)
    if not layers or any(not 1 <= x < total for x in layers) or labels != int(getattr(config, "num_labels", labels)):
        raise SourceError(f"{spec_path} names layers {layers} and {labels} labels, which this {total}-layer model "
                          "does not have — re-run `bertship exits` on this model")
    from safetensors.torch import load_file

    ramps = make_ramps(layers, hidden_width(config), labels, spec.get("pooling", "cls"))
    try:
        ramps.load_state_dict(load_file(str(ramps_path)))
    except RuntimeError as exc:
        raise SourceError(f"{ramps_path} does not fit the off-ramps exits.json describes ({str(exc)[:120]}) — "
                          "re-run `bertship exits`") from None
    return ramps.eval(), spec


def layer_states(source: Any, feeds: dict[str, Any]):
    """(states, masks, logits) of one batch: per layer, the state an off-ramp after it reads and its mask, and the
    model's final logits. Under a token schedule (a `bertship tokens` folder, source.tokens) the states are those of
    the kept tokens, as the exported graph runs them; else every token's (transformers' hidden_states)."""
    if source.tokens is not None:
        h, _, kept = source.tokens.encode_states(**feeds)
        return ({k: v[0] for k, v in kept.items()}, {k: v[1] for k, v in kept.items()}, source.tokens.logits(h))
    out = source.model(**feeds, output_hidden_states=True, return_dict=True)
    mask = feeds["attention_mask"]
    return out.hidden_states, {k: mask for k in range(len(out.hidden_states))}, out.logits


def _features(source: Any, texts: list[str], pairs: list[str] | None, layers: list[int], batch_size: int,
              max_length: int, ramps: Any, score: bool, log: Callable[[str], None], what: str):
    """One pass of the frozen model over the texts: what each off-ramp reads [N, width] and the final logits
    [N, labels] (and, with `score`, each off-ramp's logits)."""
    import torch

    firsts: dict[int, list[Any]] = {layer: [] for layer in layers}
    finals, ramp_logits = [], []
    source.model.eval()
    start, last_log = time.perf_counter(), 0.0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            second = pairs[i:i + batch_size] if pairs else None
            enc = source.tokenizer(texts[i:i + batch_size], second, padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt")
            states, masks, logits = layer_states(source, {k: enc[k] for k in source.family.inputs})
            for layer in layers:
                firsts[layer].append(ramps.features(states[layer], masks[layer]))
            finals.append(logits)
            if score:
                ramp_logits.append(torch.stack(ramps(states, masks), 0))
            now = time.perf_counter()
            if now - last_log > 10 or i + batch_size >= len(texts):
                last_log = now
                log(f"[bertship] exits    {what}: {min(i + batch_size, len(texts))}/{len(texts)} texts "
                    f"({now - start:.0f} s)")
    feats = {layer: torch.cat(v) for layer, v in firsts.items()}
    ramps_out = torch.cat(ramp_logits, 1).numpy() if ramp_logits else None
    return feats, torch.cat(finals), ramps_out


def distill(ramps: Any, feats: dict[int, Any], teacher: Any, epochs: int, lr: float, batch_size: int, seed: int,
            log: Callable[[str], None]) -> dict[str, list[float]]:
    """Train every off-ramp on cached first-token states to match the final classifier's softened predictions (KL at
    TEMPERATURE, times T², Hinton et al.); the backbone is not involved. Returns the loss per epoch per layer."""
    import torch

    torch.manual_seed(seed)
    soft = torch.softmax(teacher / TEMPERATURE, -1)
    losses: dict[str, list[float]] = {}
    n = teacher.shape[0]
    for layer in ramps.layers:
        ramp = ramps.ramps[str(layer)].train()
        opt = torch.optim.AdamW(ramp.parameters(), lr=lr, weight_decay=0.01)
        x = feats[layer]
        history = []
        for epoch in range(epochs):
            order = torch.randperm(n)
            total = 0.0
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                log_p = torch.log_softmax(ramp(x[idx]) / TEMPERATURE, -1)
                loss = torch.nn.functional.kl_div(log_p, soft[idx], reduction="batchmean") * TEMPERATURE ** 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history.append(round(total / n, 5))
        ramp.eval()
        losses[str(layer)] = history
        log(f"[bertship] exits    off-ramp after layer {layer}: distillation loss {history[0]:.4f} → {history[-1]:.4f} "
            f"({epochs} epochs)")
    return losses


def calibrate(ramp_logits: np.ndarray, final_logits: np.ndarray, labels: list[int] | None, layers: list[int],
              total: int, max_drop: float, reference_accuracy: float | None = None) -> dict[str, Any]:
    """The exit rule: for entropy and patience, the setting with the fewest mean layers whose accuracy (agreement with
    the full model, without labels) is within max_drop (relative) of the full model's (or of `reference_accuracy`:
    the PyTorch full model's, when an exported artifact's own logits are calibrated); the cheaper rule wins."""
    full_pred = final_logits.argmax(-1)
    truth = np.asarray(labels) if labels is not None else full_pred
    full_acc = float((full_pred == truth).mean()) if reference_accuracy is None else reference_accuracy
    floor = full_acc * (1.0 - max_drop)

    def measure(rule: dict[str, Any]) -> dict[str, Any]:
        pred, layer = rules.apply_offline(rule, ramp_logits, final_logits, layers, total)
        acc = float((pred == truth).mean())
        return {"rule": rule, "accuracy": round(acc, 5), "agreement": round(float((pred == full_pred).mean()), 5),
                "mean_layers": round(float(layer.mean()), 4), "exited": round(float((layer < total).mean()), 4),
                "histogram": {str(k): int((layer == k).sum()) for k in [*layers, total]},
                "within": acc >= floor - 1e-12}

    candidates = {"entropy": [{"kind": "entropy", "threshold": 0.0}], "patience": []}
    entropies = np.unique(np.round(rules.normalized_entropy(ramp_logits), 6))
    for t in entropies[:: max(1, len(entropies) // 400)].tolist() + [float(entropies.max())]:
        # just above a measured entropy, so that text leaves; 1.0 (every text but a uniform one) at most
        candidates["entropy"].append({"kind": "entropy", "threshold": min(round(float(t) + 1e-6, 6), 1.0)})
    for p in range(1, len(layers)):
        candidates["patience"].append({"kind": "patience", "patience": p})
    best: dict[str, Any] = {}
    for kind, rs in candidates.items():
        if not rs:  # patience needs two off-ramps
            continue
        tried = list(map(measure, rs))
        kept = [m for m in tried if m["within"]]
        # per rule: its cheapest setting within the limit, else (recorded, never chosen) its most accurate one
        best[kind] = (min(kept, key=lambda m: (m["mean_layers"], -m["accuracy"])) if kept else
                      max(tried, key=lambda m: (m["accuracy"], -m["mean_layers"])))
    within = [m for m in best.values() if m["within"]]
    if not within:  # not even "no text exits" holds (an artifact less accurate than the reference): none exits
        best["entropy"] = measure({"kind": "entropy", "threshold": 0.0})
        within = [best["entropy"]]
    chosen = min(within, key=lambda m: (m["mean_layers"], -m["accuracy"]))
    return {"rule": chosen["rule"], "full_accuracy": round(full_acc, 5), "max_accuracy_drop": max_drop,
            "judged_on": "labels" if labels is not None else "the full model's predictions (no labels)",
            "texts": int(final_logits.shape[0]), "layers": total, "measured": best}


def train_exits(path: str | Path, data: str | Path, out: str | Path, *, eval_data: str | Path,
                layers: str | None = None, max_accuracy_drop: str | float = "1%", pooling: str = "cls",
                epochs: int = 30, lr: float = 1e-3,
                batch_size: int = 32, max_length: int = 128, seed: int = 0, force: bool = False,
                log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """`bertship exits`: off-ramps for a fine-tuned classifier folder, calibrated; writes `out`, returns exits.json."""
    from bertship.runtimes.evaluate import read_eval_data

    from . import package
    from .fallback import parse_drop
    from .load import load_folder

    max_drop = parse_drop(max_accuracy_drop)
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--max-length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive whole number, got {value!r}")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr} — e.g. --lr 1e-3")
    root, out = Path(path), Path(out)
    package.check_folder_out(out, force, EXITS_FILE, "exits")
    log(f"[bertship] exits    loading {root} …")
    source = load_folder(root, "sequence-classification")
    if read_exits(root, source.model.config) is not None:
        raise UsageError(f"{root} already has off-ramps ({EXITS_FILE}) — run `bertship exits` on the fine-tuned "
                         "model it came from")
    total = num_layers(source.model.config)
    chosen = parse_layers(layers, total)
    id2label = {str(k): v for k, v in (getattr(source.model.config, "id2label", None) or {}).items()}
    train = read_eval_data(data, "sequence-classification", id2label)
    held = read_eval_data(eval_data, "sequence-classification", id2label)
    if bool(train.pairs) != bool(held.pairs):
        raise UsageError("--data and --eval-data differ: one has text pairs and the other not — give both the same form")
    length = min(max_length, source.max_length)
    labels = int(source.model.config.num_labels)
    ramps = make_ramps(chosen, hidden_width(source.model.config), labels, pooling)
    schedule = source.tokens.schedule if source.tokens is not None else None
    log(f"[bertship] exits    {total}-layer {source.family.name} classifier, off-ramps after layers "
        f"{','.join(map(str, chosen))}; the backbone stays frozen"
        + (f"; trained and calibrated on the kept tokens of its schedule {schedule}" if schedule else ""))
    feats, teacher, _ = _features(source, train.texts, train.pairs, chosen, batch_size, length, ramps, False, log,
                                  "off-ramp inputs on --data")
    losses = distill(ramps, feats, teacher, epochs, lr, batch_size, seed, log)
    _, final, ramp_logits = _features(source, held.texts, held.pairs, chosen, batch_size, length, ramps, True, log,
                                      "calibrating on --eval-data")
    calibration = calibrate(ramp_logits, final.numpy(), held.labels, chosen, total, max_drop)
    m = calibration["measured"]
    for kind, r in m.items():
        log(f"[bertship] exits    {kind}: {rules.describe(r['rule'])} runs {r['mean_layers']:.2f} of {total} layers on "
            f"average, accuracy {r['accuracy']:.4f} (full model {calibration['full_accuracy']:.4f}), "
            f"{r['exited'] * 100:.0f} % exit early" + ("" if r["within"] else " (its most accurate setting: outside the "
                                                      "limit)"))
    log(f"[bertship] exits    chosen: {rules.describe(calibration['rule'])}")
    spec = {"format": FORMAT, "layers": chosen, "labels": labels, "rule": calibration["rule"], "pooling": pooling,
            "head": f"Dense + tanh + Linear(hidden, labels) on the layer's {POOLED[pooling]}",
            "calibration": {**calibration, "data": str(eval_data)},
            "training": {"data": str(data), "texts": len(train.texts), "epochs": epochs, "lr": lr,
                         "batch_size": batch_size, "max_length": length, "seed": seed, "temperature": TEMPERATURE,
                         "teacher": "the model's own final classifier (backbone frozen)"
                                    + (", tokens eliminated by its schedule" if schedule else ""), "losses": losses},
            "tokens_schedule": schedule}
    def write(staging: Path) -> None:  # the fine-tuned model travels unchanged: transformers loads it as before
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ramps.state_dict().items()}, str(staging / RAMPS_FILE))
        (staging / EXITS_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    package.write_folder(root, out, lambda _: False, write)
    return spec


def summary(spec: dict[str, Any]) -> str:
    """`bertship analyze`'s lines for a folder with off-ramps: where the texts of --eval-data left under each rule."""
    cal = spec["calibration"]
    on = f" on the kept tokens of schedule {spec['tokens_schedule']}" if spec.get("tokens_schedule") else ""
    lines = [f"early exit: off-ramps after layers {','.join(map(str, spec['layers']))} of {cal['layers']}{on}; rule "
             f"{rules.describe(spec['rule'])} (calibrated on {cal['texts']} texts of {cal.get('data')})"]
    for kind, m in cal["measured"].items():
        hist = ", ".join(f"layer {k}: {v}" for k, v in m.get("histogram", {}).items())
        lines.append(f"  {kind:<8} {rules.describe(m['rule'])}: mean {m['mean_layers']:.2f} layers, accuracy "
                     f"{m['accuracy']:.4f} (full {cal['full_accuracy']:.4f}); texts leaving after {hist}"
                     + ("" if m.get("within", True) else " (outside the limit)"))
    return "\n".join(lines)


def plot(spec: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of where the texts of --eval-data left, one group of bars per rule measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = spec["calibration"]
    measured = cal["measured"]
    layers = list(next(iter(measured.values()))["histogram"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(measured), 1)
    for i, (kind, m) in enumerate(measured.items()):
        xs = [j + i * width for j in range(len(layers))]
        chosen = " (chosen)" if m["rule"] == spec["rule"] else ""
        ax.bar(xs, [m["histogram"][k] for k in layers], width,
               label=f"{rules.describe(m['rule'])}{chosen}: mean {m['mean_layers']:.2f}, acc {m['accuracy']:.3f}")
    ax.set_xticks([j + width * (len(measured) - 1) / 2 for j in range(len(layers))])
    ax.set_xticklabels([f"{k}" + (" (all)" if k == str(cal["layers"]) else "") for k in layers])
    ax.set_xlabel("layer the text left after")
    ax.set_ylabel("texts")
    ax.set_title(f"Early exit on {cal['texts']} held-out texts (full model accuracy {cal['full_accuracy']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
