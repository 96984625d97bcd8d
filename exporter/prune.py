"""Structured pruning: rank attention heads and FFN neurons by importance, zero the least important ones.

Importance with labelled data (`data=`, TSV text<TAB>label): Michel et al. 2019, "Are Sixteen Heads Really Better
than One?" — |dL/d mask| accumulated over batches, where a mask of ones scales each head's context (equivalent to
transformers' head_mask) and each FFN neuron's activation. Without data: weight magnitude, ||value rows|| x
||output columns|| per head and ||input row|| x ||output column|| per neuron.

Ranking: "global" (default) normalizes scores within each layer (L2, as Michel et al.) and ranks all layers
together, so layers keep different numbers of heads and neurons — what `compact` turns into non-uniform shapes;
"per-layer" removes the same fraction in every layer.

The checkpoint written keeps every shape and ZEROES what was pruned (Q/K/V rows and biases and output-projection
columns of a head; the input row, bias and output column of a neuron): `bertship analyze` finds them and
`bertship export --compact` removes them. A transformers config cannot express per-layer FFN widths, so zeroing is the
form that reloads everywhere.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from bertship.runtimes.errors import UsageError

from . import layout as lay

RANKINGS = ("global", "per-layer")
PRUNING_FILE = "pruning.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def parse_ratio(text: str | float, option: str) -> float:
    """'50%' or '50' (percent) -> 0.5; a float is already a fraction; outside 0-100 % is a UsageError."""
    raw = str(text).strip()
    try:
        value = float(text) if isinstance(text, float) else float(raw.removesuffix("%")) / 100.0
    except ValueError:
        raise UsageError(f"{option} {raw!r} is not a percentage — give e.g. {option} 50%") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{option} {raw} is outside 0–100 % — give a fraction to remove such as {option} 50%")
    return value


def magnitude_scores(model: Any) -> tuple[list[list[float]], list[list[float]]]:
    """Per layer: a score per head, and a score per FFN neuron (all FFNs of the layer concatenated)."""
    heads, neurons = [], []
    for view in lay.layers(model):
        L = view.layout
        n = view.num_heads()
        wv, _ = view.value()
        wo, _ = lay.effective(view.get(L.o))
        size = wv.shape[0] // max(n, 1)
        heads.append([float(wv[h * size:(h + 1) * size].norm() * wo[:, h * size:(h + 1) * size].norm())
                      for h in range(n)])
        row = []
        for ffn in view.ffn_paths():
            w_in, _ = lay.effective(view.get(ffn[0]))
            w_out, _ = lay.effective(view.get(ffn[1]))
            if L.glu:  # a GLU neuron is its value row and its gate row together
                w_in = w_in.reshape(2, -1, w_in.shape[1]).permute(1, 0, 2).reshape(w_out.shape[1], -1)
            row += (w_in.norm(dim=1) * w_out.norm(dim=0)).tolist()
        neurons.append(row)
    return heads, neurons


def gradient_scores(model: Any, batches: list[dict[str, Any]]) -> tuple[list[list[float]], list[list[float]]]:
    """Michel et al. importance: sum over batches of |dL/d mask| for every head and FFN neuron."""
    import torch

    views = lay.layers(model)
    masks, hooks = [], []
    for view in views:
        size = int(view.get(view.layout.heads[1])) // max(view.num_heads(), 1)
        head_mask = torch.ones(view.num_heads(), requires_grad=True)
        hooks.append(view.get(view.layout.o).register_forward_pre_hook(_scale(head_mask, size)))
        ffn_masks = []
        for ffn in view.ffn_paths():
            mask = torch.ones(lay.parts(view.get(ffn[1]))[0].in_features, requires_grad=True)
            hooks.append(view.get(ffn[1]).register_forward_pre_hook(_scale(mask, 1)))
            ffn_masks.append(mask)
        masks.append((head_mask, ffn_masks))
    heads = [torch.zeros(m[0].shape) for m in masks]
    neurons = [[torch.zeros(f.shape) for f in m[1]] for m in masks]
    model.eval()  # no dropout: the scores are a property of the weights, not of the noise
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # only the masks need gradients: skip the weights' backward pass
        p.requires_grad_(False)
    try:
        for batch in batches:
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, [t for h, f in masks for t in (h, *f)], allow_unused=True)
            it = iter(grads)
            for i, (h, f) in enumerate(masks):
                g = next(it)
                heads[i] += 0 if g is None else g.abs()
                for j in range(len(f)):
                    g = next(it)
                    neurons[i][j] += 0 if g is None else g.abs()
    finally:
        for hook in hooks:
            hook.remove()
        for p in trainable:
            p.requires_grad_(True)
    return [h.tolist() for h in heads], [torch.cat(n).tolist() if n else [] for n in neurons]


def _scale(mask: Any, size: int) -> Callable:
    def hook(module, args):
        return (args[0] * mask.repeat_interleave(size),) + tuple(args[1:])

    return hook


def select(scores: list[list[float]], ratio: float, ranking: str) -> list[list[int]]:
    """Per layer, the indices with the lowest scores: `ratio` of them overall (global) or in each layer."""
    import math

    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r} — choose from: {', '.join(RANKINGS)}")
    if ranking == "per-layer":
        return [sorted(sorted(range(len(s)), key=lambda i: s[i])[:round(ratio * len(s))]) for s in scores]
    norms = [math.sqrt(sum(v * v for v in s)) or 1.0 for s in scores]
    ranked = sorted((s[i] / norms[l], l, i) for l, s in enumerate(scores) for i in range(len(s)))
    chosen: list[list[int]] = [[] for _ in scores]
    for _, l, i in ranked[:round(ratio * len(ranked))]:
        chosen[l].append(i)
    return [sorted(c) for c in chosen]


def apply(model: Any, heads: list[list[int]], neurons: list[list[int]]) -> None:
    """Zero the chosen heads and neurons in place (indices per layer; neurons over the layer's FFNs in order)."""
    import torch

    views = lay.layers(model)
    if views and all(v.num_heads() and len(set(h)) >= v.num_heads() for v, h in zip(views, heads)):
        raise UsageError("this head mask removes every head of every layer, which leaves a model that does not attend "
                         "— prune a smaller fraction of heads (e.g. --heads 50%)")
    with torch.no_grad():
        for view, dead, gone in zip(views, heads, neurons):
            L = view.layout
            size = int(view.get(L.heads[1])) // max(view.num_heads(), 1)
            for path, rows in view.head_rows(list(dead)).items():
                last = lay.parts(view.get(path))[-1]
                last.weight[rows] = 0
                if last.bias is not None:
                    last.bias[rows] = 0
            for h in dead:
                lay.parts(view.get(L.o))[0].weight[:, h * size:(h + 1) * size] = 0
            start = 0
            for ffn in view.ffn_paths():
                width = lay.parts(view.get(ffn[1]))[0].in_features
                local = [i - start for i in gone if start <= i < start + width]
                last = lay.parts(view.get(ffn[0]))[-1]
                last.weight[view.ffn_rows(ffn, local)] = 0
                if last.bias is not None:
                    last.bias[view.ffn_rows(ffn, local)] = 0
                lay.parts(view.get(ffn[1]))[0].weight[:, local] = 0
                start += width


DISTILL_TEMPERATURE = 2.0
DISTILL_WEIGHT = 0.5  # share of the distillation term in the recovery loss; the rest is cross-entropy on the labels


def recover(model: Any, batches: list[dict[str, Any]], steps: int, heads: list[list[int]], neurons: list[list[int]],
            lr: float = 2e-5, teacher: Any = None, log: Callable[[str], None] = lambda _: None) -> list[float]:
    """A short fine-tune on the labelled batches; the pruned heads and neurons are zeroed again after every step.

    With a `teacher` (the unpruned model), the loss mixes cross-entropy with logit distillation (Hinton et al. 2015):
    (1 - w) CE + w T² KL(softmax(teacher / T) || softmax(student / T)), w = DISTILL_WEIGHT, T = DISTILL_TEMPERATURE.
    """
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    temp, w = DISTILL_TEMPERATURE, DISTILL_WEIGHT
    for step in range(steps):
        batch = batches[step % len(batches)]
        out = model(**batch)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                target = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
            kd = F.kl_div(F.log_softmax(out.logits / temp, -1), F.softmax(target / temp, -1),
                          reduction="batchmean") * temp * temp
            loss = (1 - w) * loss + w * kd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        apply(model, heads, neurons)
        losses.append(loss.item())
        if (step + 1) % max(steps // 10, 1) == 0 or step + 1 == steps:
            recent = losses[-max(steps // 10, 1):]
            log(f"[bertship] prune    recovery step {step + 1}/{steps}: mean loss {sum(recent) / len(recent):.4f}")
    model.eval()
    return losses


def batches(source: Any, data_path: str | Path, batch_size: int, max_length: int) -> list[dict[str, Any]]:
    """Tokenized labelled batches of a TSV/JSONL file (labels by name from id2label, or by index)."""
    import torch

    from bertship.runtimes.evaluate import read_eval_data

    id2label = {str(k): v for k, v in (getattr(source.model.config, "id2label", None) or {}).items()}
    data = read_eval_data(data_path, "sequence-classification", id2label)
    out = []
    for start in range(0, len(data.texts), batch_size):
        second = data.pairs[start:start + batch_size] if data.pairs else None
        enc = source.tokenizer(data.texts[start:start + batch_size], second, padding=True, truncation=True,
                               max_length=max_length, return_tensors="pt")
        feed = {k: enc[k] for k in source.family.inputs}
        feed["labels"] = torch.tensor(data.labels[start:start + batch_size])
        out.append(feed)
    return out


def prune(path: str | Path, out: str | Path, *, heads: str | float = "0%", ffn: str | float = "0%",
          data: str | Path | None = None, ranking: str = "global", recover_steps: int = 0, batch_size: int = 16,
          max_length: int = 128, lr: float = 2e-5, distill: bool = False, importance_rows: int | None = None,
          force: bool = False, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Prune a model folder into a new checkpoint folder at `out` (zeroed heads/neurons); returns the record."""
    from . import package
    from .load import load_folder
    from .tasks import task_from_architectures

    head_ratio, ffn_ratio = parse_ratio(heads, "--heads"), parse_ratio(ffn, "--ffn")
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking {ranking!r} — choose from: {', '.join(RANKINGS)}")
    if head_ratio >= 1.0:
        raise UsageError("--heads 100% removes every head of every layer, which leaves a model that does not attend — "
                         "prune a smaller fraction of heads (e.g. --heads 50%)")
    if recover_steps < 0 or (recover_steps and data is None):
        raise UsageError("--recover-steps fine-tunes on labelled data — pass --data train.tsv, or drop it")
    if distill and not recover_steps:
        raise UsageError("--distill applies to the recovery fine-tune — add --recover-steps N (and --data)")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr} — e.g. --lr 2e-5")
    if importance_rows is not None and importance_rows < 1:
        raise UsageError(f"--importance-rows must be at least 1, got {importance_rows} — or drop it to use all of --data")
    root, out = Path(path), Path(out)
    package.check_folder_out(out, force, PRUNING_FILE, "prune")
    raw = json.loads((root / "config.json").read_text(encoding="utf-8")) if (root / "config.json").is_file() else {}
    implied = task_from_architectures(raw.get("architectures")) or (root / "modules.json").is_file()
    source = load_folder(root, "sequence-classification" if data else None if implied else "feature-extraction")
    model = source.model
    fixed = lay.layout_of(model).heads_fixed
    if fixed and head_ratio > 0:
        raise UsageError(f"--heads cannot speed up {source.family.name}: {fixed} — prune FFN neurons (--ffn) instead")
    if data is not None:
        feeds = batches(source, data, batch_size, min(max_length, source.max_length))
        scored = feeds if importance_rows is None else feeds[: -(-importance_rows // batch_size)]
        log(f"[bertship] prune    gradient importance on {sum(len(f['labels']) for f in scored)} labelled rows …")
        head_scores, neuron_scores = gradient_scores(model, scored)
    else:
        feeds = scored = []
        log("[bertship] prune    weight-magnitude importance (no --data) …")
        head_scores, neuron_scores = magnitude_scores(model)
    chosen_heads = select(head_scores, head_ratio, ranking)
    chosen_neurons = select(neuron_scores, ffn_ratio, ranking)
    teacher = copy.deepcopy(model).eval() if distill else None
    apply(model, chosen_heads, chosen_neurons)
    if recover_steps:
        log(f"[bertship] prune    recovery: {recover_steps} steps of {batch_size} rows, lr {lr:g}"
            + (f", distilling from the unpruned model (T={DISTILL_TEMPERATURE:g}, weight {DISTILL_WEIGHT:g})"
               if distill else "") + " …")
    losses = recover(model, feeds, recover_steps, chosen_heads, chosen_neurons, lr, teacher, log) if recover_steps else []
    record = {"source": str(root.resolve()), "importance": "gradient (Michel et al. 2019)" if data else "magnitude",
              "data": str(data) if data else None, "ranking": ranking, "heads": head_ratio, "ffn": ffn_ratio,
              "form": "zeroed (shapes unchanged): export with --compact to remove them",
              "heads_zeroed": {str(i): h for i, h in enumerate(chosen_heads) if h},
              "neurons_zeroed": {str(i): len(n) for i, n in enumerate(chosen_neurons) if n},
              "recover_steps": recover_steps, "recover_lr": lr, "recover_batch_size": batch_size,
              "distill": {"teacher": "the unpruned model", "temperature": DISTILL_TEMPERATURE,
                          "weight": DISTILL_WEIGHT} if distill else None,
              "importance_rows": sum(len(f["labels"]) for f in scored) if data is not None else None,
              "recover_losses": losses}
    def write(staging: Path) -> None:  # tokenizer and sentence-transformers files travel unchanged
        model.save_pretrained(staging, safe_serialization=True)
        (staging / PRUNING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    package.write_folder(root, out, lambda name: name in WEIGHT_FILES or name == "config.json", write)
    return record


def zero_smallest(model: Any, level: float) -> Any:
    """Unstructured magnitude pruning, in place: zero the `level` fraction of smallest weights of every Linear in the
    encoder layers (embeddings and heads untouched). What compaction cannot remove; what a zip container shrinks."""
    import torch

    with torch.no_grad():
        for view in lay.layers(model):
            for m in view.module.modules():
                if isinstance(m, torch.nn.Linear):
                    cut = m.weight.abs().flatten().kthvalue(max(int(level * m.weight.numel()), 1)).values
                    m.weight[m.weight.abs() <= cut] = 0
    return model
