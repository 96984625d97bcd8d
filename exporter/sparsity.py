"""Sparsity analysis: where a model's zeros are, what they cost a dense runtime, and what compaction would remove.

Never changes the model. FLOPs are those of the encoder layers (every Linear plus the two attention matmuls) for
one sequence of `seq_len` tokens, counted per use (an ALBERT shared layer runs num_hidden_layers times).

A head is dead when nothing of it reaches the output: its output-projection columns are zero, or its value rows and
value bias are (softmax rows sum to 1, so its context is 0). An FFN neuron is dead when its output column is zero,
or its input row and bias are and the activation maps 0 to 0 (GELU, ReLU). Removing either is exact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import SourceError

from . import layout as lay

SEQ_LEN = 128
BLOCK = 4  # zero blocks are counted as BLOCK x BLOCK tiles
N_M = (2, 4)  # at most N nonzeros in every M consecutive weights along the input axis

# No kernel these runtimes run here skips zeros (ANCHORS §3: a 90 %-sparse model ran as fast as dense).
KERNELS = {
    "onnxruntime": "CPU execution provider: dense MLAS GEMM (fp32) and QGEMM/MatMulInteger (int8) kernels; a zero "
                   "weight is loaded and multiplied like any other — unstructured zeros give no speed",
    "openvino": "CPU plugin: dense FullyConnected kernels by default; on AMX CPUs the runner option "
                "sparse_weights_decompression_rate switches int8 layers that sparse to its sparse-weight kernel "
                "(brgemm_avx512_amx_sparse_I8), which on MiniLM with 80 % zeros was measured no faster than dense "
                "(bench/results/sparsity.md) — unstructured zeros give no speed",
    "what zeros do give": "a smaller download: int8 zeros compress (see bench/results/sparsity.md for the measured "
                          "zip sizes); structured zeros (dead heads/neurons) give speed once `compact` removes them",
}


@dataclass
class SparsityReport:
    """Per-layer sparsity of a model, with totals; `as_dict()` is the JSON written by `bertship analyze --json`."""

    family: str
    seq_len: int
    layers: list[dict[str, Any]]
    totals: dict[str, Any]
    kernels: dict[str, str] = field(default_factory=lambda: dict(KERNELS))
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return asdict(self)

    def table(self) -> str:
        """The report as a fixed-width terminal table, totals and notes below it."""
        head = (f"{'layer':>5} {'uses':>4} {'heads':>5} {'dead':>4} {'pruned':>6} {'ffn':>6} {'dead':>6} {'zeros%':>6} "
                f"{'0-blk%':>6} {'2:4%':>5} {'MFLOP':>9} {'on 0s':>9} {'removable':>9}  state")
        rows = [head]
        for r in self.layers:
            state = ("attention+FFN dead" if r["attention_dead"] and r["ffn_dead"] else "attention dead"
                     if r["attention_dead"] else "FFN dead" if r["ffn_dead"] else "")
            rows.append(f"{r['index']:>5} {r['uses']:>4} {r['heads']:>5} {len(r['dead_heads']):>4} "
                        f"{len(r['pruned_heads']):>6} {sum(r['ffn_widths']):>6} {sum(r['dead_neurons']):>6} "
                        f"{100 * r['sparsity']:>6.1f} {100 * r['zero_blocks']:>6.1f} {100 * r['n_m']:>5.1f} "
                        f"{r['flops'] / 1e6:>9.1f} {r['flops_on_zeros'] / 1e6:>9.1f} "
                        f"{r['flops_removable'] / 1e6:>9.1f}  {state}")
        t = self.totals
        rows += ["", f"{self.family}, {len(self.layers)} distinct layer(s), sequence {self.seq_len}: "
                 f"{t['flops'] / 1e9:.3f} GFLOP dense, {t['flops_on_zeros'] / 1e9:.3f} GFLOP multiply zero weights "
                 f"({100 * t['sparsity']:.1f} % of layer weights are 0)",
                 f"compaction removes {t['dead_heads']} head(s), {t['dead_neurons']} FFN neuron(s): "
                 f"{t['flops_removable'] / 1e9:.3f} GFLOP ({100 * t['flops_removable'] / max(t['flops'], 1):.1f} %), "
                 f"{t['params_removable'] / 1e6:.2f} M of {t['params'] / 1e6:.2f} M layer parameters; "
                 f"FLOP ratio dense/compacted {t['flop_ratio']:.2f}"]
        rows += [f"{k}: {v}" for k, v in self.kernels.items()]
        rows += [f"note: {n}" for n in self.notes]
        return "\n".join(rows)


def dead_heads(view: lay.LayerView) -> list[int]:
    """Indices (among the layer's current heads) of heads whose output is exactly zero."""
    heads = view.num_heads()
    if heads == 0:
        return []
    L = view.layout
    wv, bv = view.value()
    wo, _ = lay.effective(view.get(L.o), L.o)
    size = wv.shape[0] // heads
    dead = []
    for h in range(heads):
        rows = slice(h * size, (h + 1) * size)
        no_value = not wv[rows].any() and (bv is None or not bv[rows].any())
        if no_value or not wo[:, rows].any():
            dead.append(h)
    return dead


def dead_neurons(view: lay.LayerView, ffn: tuple[str, str, str]) -> list[int]:
    """Indices of the FFN's neurons whose output is exactly zero (GLU: also when its gate row and bias are zero,
    since the product is then zero whatever the activation)."""
    import torch

    w_in, b_in = lay.effective(view.get(ffn[0]), ffn[0])
    w_out, _ = lay.effective(view.get(ffn[1]), ffn[1])
    width = w_out.shape[1]
    silent = ~w_in.any(1) if b_in is None else ~w_in.any(1) & (b_in == 0)
    dead = ~w_out.any(0)
    with torch.no_grad():
        zero_in = float(view.get(ffn[2])(torch.zeros(1))) == 0.0
    if view.layout.glu:
        dead |= silent[width:]  # gate row zero
        if zero_in:
            dead |= silent[:width]
    elif zero_in:
        dead |= silent
    return [int(i) for i in torch.nonzero(dead).flatten()]


def original_heads(view: lay.LayerView, current: list[int]) -> list[int]:
    """Map current head indices to the model's original numbering (heads already pruned are skipped)."""
    pruned = getattr(view.get(view.layout.attention), "pruned_heads", set())
    total = view.num_heads() + len(pruned)
    alive = [h for h in range(total) if h not in pruned]
    return [alive[i] for i in current]


def layer_flops(view: lay.LayerView, seq_len: int) -> int:
    """FLOPs of one use of the layer on one sequence: 2 per multiply-add of every Linear and of QK^T and PV."""
    import torch

    linear = sum(m.in_features * m.out_features for m in view.module.modules() if isinstance(m, torch.nn.Linear))
    width = int(view.get(view.layout.heads[1])) if view.attends() else 0
    return 2 * seq_len * linear + 4 * seq_len * seq_len * width


def layer_params(view: lay.LayerView) -> int:
    """Parameters of the layer's Linear modules (weights and biases)."""
    import torch

    return sum(p.numel() for m in view.module.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())


def matrix_stats(weight: Any) -> dict[str, Any]:
    """Unstructured sparsity, fraction of all-zero BLOCK x BLOCK tiles, and fraction of N:M-conforming groups."""
    w = weight.detach()
    zeros = int((w == 0).sum())
    rows, cols = (w.shape[0] // BLOCK) * BLOCK, (w.shape[1] // BLOCK) * BLOCK
    tiles = w[:rows, :cols].reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK)
    zero_tiles = (~tiles.any(3).any(1)).float().mean().item() if rows and cols else 0.0
    n, m = N_M
    usable = (w.shape[1] // m) * m
    groups = (w[:, :usable] != 0).reshape(w.shape[0], -1, m).sum(-1) if usable else None
    n_m = (groups <= n).float().mean().item() if groups is not None else 0.0
    return {"shape": list(w.shape), "zeros": zeros, "sparsity": zeros / w.numel(), "zero_blocks": zero_tiles,
            "n_m": n_m}


def analyze(model: Any, seq_len: int = SEQ_LEN) -> SparsityReport:
    """Per-layer sparsity report of a transformers encoder in memory; the model is not changed."""
    import torch

    views = lay.layers(model)
    family = getattr(model.config, "model_type", "?")
    pruned_cfg = {int(k): sorted(v) for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()}
    out = []
    with torch.no_grad():
        for view in views:
            out.append(_layer(view, seq_len, pruned_cfg.get(view.index, [])))
    total = {k: sum(r[k] * r["uses"] for r in out)
             for k in ("flops", "flops_on_zeros", "flops_removable")}
    total.update({k: sum(r[k] for r in out) for k in ("params", "zero_params", "params_removable")})
    total["dead_heads"] = sum(len(r["dead_heads"]) for r in out)
    total["dead_neurons"] = sum(sum(r["dead_neurons"]) for r in out)
    total["sparsity"] = total["zero_params"] / max(total["params"], 1)
    total["flop_ratio"] = total["flops"] / max(total["flops"] - total["flops_removable"], 1)
    notes = [views[0].layout.note] if views and views[0].layout.note else []
    if any(r["uses"] > 1 for r in out):
        notes.append("shared layers (ALBERT): stored once, run several times; FLOPs count every use")
    if all(r["attention_dead"] for r in out):
        notes.append("every head of every layer is dead: the model no longer attends; compaction refuses it")
    return SparsityReport(family, seq_len, out, total, notes=notes)


def _layer(view: lay.LayerView, seq_len: int, pruned: list[int]) -> dict[str, Any]:
    import torch

    heads = view.num_heads()
    dead = dead_heads(view)
    matrices = {name: matrix_stats(m.weight) for name, m in view.module.named_modules()
                if isinstance(m, torch.nn.Linear)}
    params = layer_params(view)
    zero_params = sum(int((p == 0).sum()) for m in view.module.modules() if isinstance(m, torch.nn.Linear)
                      for p in m.parameters())
    zero_weights = sum(s["zeros"] for s in matrices.values())
    flops_rm, params_rm = _head_removal(view, heads, len(dead), seq_len)
    widths, dead_counts, dead_lists, ffn_dead = [], [], [], []
    for ffn in view.ffn_paths():
        width = lay.parts(view.get(ffn[1]), ffn[1])[0].in_features
        gone = dead_neurons(view, ffn)
        widths.append(width)
        dead_counts.append(len(gone))
        dead_lists.append(gone)
        ffn_dead.append(bool(width) and len(gone) == width)
        f, p = _ffn_removal(view, ffn, width, len(gone), seq_len)
        flops_rm += f
        params_rm += p
    stats = list(matrices.values())
    weights = sum(s["shape"][0] * s["shape"][1] for s in stats)
    return {
        "index": view.index, "uses": view.uses, "heads": heads, "head_size": _head_size(view),
        "dead_heads": dead, "dead_heads_original": original_heads(view, dead), "pruned_heads": pruned,
        "attention_dead": heads > 0 and len(dead) == heads, "ffn_widths": widths, "dead_neurons": dead_counts,
        "dead_neuron_indices": dead_lists, "ffn_dead": bool(ffn_dead) and all(ffn_dead),
        "sparsity": zero_weights / max(weights, 1),
        "zero_blocks": sum(s["zero_blocks"] * s["shape"][0] * s["shape"][1] for s in stats) / max(weights, 1),
        "n_m": sum(s["n_m"] * s["shape"][0] * s["shape"][1] for s in stats) / max(weights, 1),
        "matrices": matrices, "params": params, "zero_params": zero_params, "params_removable": params_rm,
        "flops": layer_flops(view, seq_len), "flops_on_zeros": 2 * seq_len * zero_weights,
        "flops_removable": flops_rm,
    }


def _head_size(view: lay.LayerView) -> int:
    heads = view.num_heads()
    return int(view.get(view.layout.heads[1])) // heads if heads else 0


def _head_removal(view: lay.LayerView, heads: int, dead: int, seq_len: int) -> tuple[int, int]:
    """(FLOPs, params) compaction removes from the attention."""
    L = view.layout
    if not dead:
        return 0, 0
    o = view.get(L.o)
    inputs = {path: view.get(path) for path, _ in view.head_linears()}  # a fused Wqkv counted once
    if dead == heads and L.attn_dead is not None:
        macs = sum(lay.macs(m) for m in (*inputs.values(), o))
        params = sum(p.numel() for m in (*inputs.values(), o) for p in m.parameters()) - lay.bias_size(o)
        return 2 * seq_len * macs + 4 * seq_len * seq_len * int(view.get(L.heads[1])), params
    if L.heads_fixed:  # the family cannot have fewer heads in one layer (see Layout.heads_fixed)
        return 0, 0
    gone = min(dead, heads - 1)  # without a replacement, one dead head stays so that no tensor has width 0
    size = _head_size(view)
    sections = view.head_linears()
    per_token = size * (sum(lay.in_features(view.get(p)) for p, _ in sections) + lay.out_features(o))
    biases = size * sum(lay.parts(view.get(p))[-1].bias is not None for p, _ in sections)
    return gone * (2 * seq_len * per_token + 4 * seq_len * seq_len * size), gone * (per_token + biases)


def _ffn_removal(view: lay.LayerView, ffn: tuple[str, str, str], width: int, dead: int, seq_len: int) -> tuple[int, int]:
    first, second = view.get(ffn[0]), view.get(ffn[1])
    if dead == width and view.layout.ffn_dead is not None:
        params = sum(p.numel() for m in (first, second) for p in m.parameters()) - lay.bias_size(second)
        return 2 * seq_len * (lay.macs(first) + lay.macs(second)), params
    gone = min(dead, width - 1)
    rows = 2 if view.layout.glu else 1  # input-linear rows per neuron
    per_token = rows * lay.in_features(first) + lay.out_features(second)
    return gone * 2 * seq_len * per_token, gone * (per_token + rows * (lay.parts(first)[-1].bias is not None))


def plot(report: SparsityReport, path: str | Path) -> Path:
    """A per-layer heat map: unstructured sparsity of each weight matrix, plus dead heads and dead neurons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(dict.fromkeys(n for r in report.layers for n in r["matrices"]))
    grid = np.array([[r["matrices"].get(n, {}).get("sparsity", np.nan) for n in names]
                     + [len(r["dead_heads"]) / max(r["heads"], 1), sum(r["dead_neurons"]) / max(sum(r["ffn_widths"]), 1)]
                     for r in report.layers])
    columns = names + ["dead heads", "dead neurons"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(columns), 1.2 + 0.45 * len(report.layers)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(report.layers)), [f"layer {r['index']}" for r in report.layers], fontsize=7)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if value < 0.5 else "black")
    fig.colorbar(image, ax=ax, label="fraction zero / dead")
    ax.set_title(f"{report.family}: zeros per layer (%)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_model(path: str | Path) -> Any:
    """The encoder of a model folder for analysis (no tokenizer or head needed); SourceError names what is wrong."""
    from . import load as load_stage
    from .families import family_of

    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"model folder {str(root)!r} does not exist — pass a folder with config.json and weights")
    if not (root / "config.json").is_file():
        raise SourceError(f"{str(root)!r} has no config.json — pass a Hugging Face model folder (save_pretrained)")
    try:
        raw = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{root / 'config.json'} is not valid JSON ({exc}) — restore the file") from None
    if raw.get("auto_map"):
        raise SourceError(f"{str(root)!r} needs its own Python code (auto_map) — bertship never runs a checkpoint's code")
    family_of(raw.get("model_type"))
    weights = load_stage._check_weights(root, allow_pickle=False)
    lay.check_pruned_heads(raw)
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(root, local_files_only=True, attn_implementation="eager",
                                         use_safetensors=weights["format"] == "safetensors").eval()
    except Exception as exc:  # transformers raises RuntimeError/ValueError/IndexError for weights that do not fit
        raise lay.weights_mismatch(root, exc) from None


def load_tokenizer(path: str | Path) -> Any:
    """The fast tokenizer of a model folder (for exporting the variants analysis and compaction make of it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(path), local_files_only=True)
