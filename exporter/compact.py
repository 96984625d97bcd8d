"""Compaction: dead heads and dead FFN neurons are physically removed, so a pruned model becomes a smaller dense one.

`compact(model)` is pure: it returns a compacted copy and a CompactionReport, and leaves `model` as it was. Outputs
equal the original's within float round-off (removed rows and columns only ever added zeros). Head counts and FFN
widths may differ per layer. A sublayer with nothing left is replaced by what it still computes (its output bias,
added to the residual and normalized) — never by a tensor of width 0, on which ONNX Runtime's integer MatMul returns
uninitialised memory. Non-uniform FFN widths cannot be written to a transformers config: export the compacted model
from memory (`export(compacted, tokenizer, …)`); head pruning alone is recorded in config.pruned_heads as usual.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from bertship.runtimes.errors import SourceError

from . import layout as lay
from .sparsity import SEQ_LEN, dead_heads, dead_neurons, layer_flops, layer_params, original_heads


@dataclass
class LayerCompaction:
    """What compaction did to one distinct layer."""

    index: int
    uses: int
    heads_before: int
    heads_after: int
    heads_removed: list[int]  # in the model's original head numbering
    ffn_before: list[int]
    ffn_after: list[int]
    attention: str  # "kept", "heads removed" or what replaced it
    ffn: str
    shapes: dict[str, list[int]]  # weight shapes after compaction
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int


@dataclass
class CompactionReport:
    """Per-layer record of a compaction, FLOPs (one sequence of `seq_len` tokens) and parameters before and after."""

    family: str
    seq_len: int
    layers: list[LayerCompaction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def flops_before(self) -> int:
        """FLOPs of the encoder layers before compaction, every use counted."""
        return sum(r.flops_before * r.uses for r in self.layers)

    @property
    def flops_after(self) -> int:
        """FLOPs of the encoder layers after compaction, every use counted."""
        return sum(r.flops_after * r.uses for r in self.layers)

    @property
    def flop_ratio(self) -> float:
        """Dense FLOPs over compacted FLOPs: the speed-up compaction can at most deliver."""
        return self.flops_before / max(self.flops_after, 1)

    def removed_sublayers(self) -> dict[str, int]:
        """How many attention and FFN applications the forward pass no longer runs (ALBERT: per use)."""
        return {"attention": sum(r.uses for r in self.layers if r.heads_after == 0 and r.heads_before),
                "ffn": sum(r.uses for r in self.layers if r.ffn.startswith("replaced"))}

    def as_dict(self) -> dict[str, Any]:
        """The record for manifest["compaction"]."""
        return {"family": self.family, "seq_len": self.seq_len, "flops_before": self.flops_before,
                "flops_after": self.flops_after, "flop_ratio": self.flop_ratio,
                "params_before": sum(r.params_before for r in self.layers),
                "params_after": sum(r.params_after for r in self.layers),
                "removed_sublayers": self.removed_sublayers(), "notes": list(self.notes),
                "layers": [asdict(r) for r in self.layers]}


def _modules():
    """The two replacement modules (defined here so that importing this file needs no torch)."""
    import torch

    class ResidualNorm(torch.nn.Module):
        """A sublayer with nothing left that adds the residual and normalizes itself: norm(x + output bias)."""

        def __init__(self, norm, bias, as_tuple: int):
            super().__init__()
            self.norm, self.bias, self.as_tuple = norm, torch.nn.Parameter(bias.clone()), int(as_tuple)

        def forward(self, hidden_states, *args, **kwargs):
            out = self.norm(hidden_states + self.bias)
            return (out,) + (None,) * (self.as_tuple - 1) if self.as_tuple else out

    class BiasOnly(torch.nn.Module):
        """A sublayer with nothing left whose layer adds the residual and normalizes outside: its output bias."""

        def __init__(self, bias, as_tuple: int):
            super().__init__()
            self.bias, self.as_tuple = torch.nn.Parameter(bias.clone()), int(as_tuple)

        # named `query`: DistilBERT calls its attention with query=…; FFNs pass the input positionally
        def forward(self, query, *args, **kwargs):
            out = self.bias.expand_as(query)
            return (out,) + (None,) * (self.as_tuple - 1) if self.as_tuple else out

    return ResidualNorm, BiasOnly


def compact(model: Any, seq_len: int = SEQ_LEN) -> tuple[Any, CompactionReport]:
    """A copy of `model` without its dead heads and FFN neurons, and the report of what was removed."""
    import torch

    views = lay.layers(model)
    if views and all(v.num_heads() and len(dead_heads(v)) == v.num_heads() for v in views):
        raise SourceError("every attention head of every layer is zero: the model no longer attends, which is a broken "
                          "pruning, not a sparse model — restore heads (prune a smaller fraction)")
    work = copy.deepcopy(model).eval()
    report = CompactionReport(getattr(model.config, "model_type", "?"), seq_len)
    if views and views[0].layout.note:
        report.notes.append(views[0].layout.note)
    with torch.no_grad():
        for view in lay.layers(work):
            before = (view.num_heads(), [lay.parts(view.get(f[1]))[0].in_features for f in view.ffn_paths()],
                      layer_flops(view, seq_len), layer_params(view))
            removed, attention = _compact_heads(work, view)
            ffn = _compact_ffns(view)
            report.layers.append(LayerCompaction(
                view.index, view.uses, before[0], view.num_heads(), removed, before[1],
                [lay.parts(view.get(f[1]))[0].in_features for f in view.ffn_paths()], attention, ffn,
                {n: list(m.weight.shape) for n, m in view.module.named_modules() if isinstance(m, torch.nn.Linear)},
                before[2], layer_flops(view, seq_len), before[3], layer_params(view)))
    return work, report


def _compact_heads(model: Any, view: lay.LayerView) -> tuple[list[int], str]:
    L = view.layout
    heads = view.num_heads()
    dead = dead_heads(view)
    if not dead:
        return [], "kept"
    original = original_heads(view, dead)
    if len(dead) == heads and L.attn_dead is not None:
        o = view.get(L.o)
        _, bias = lay.effective(o, L.o)
        bias = bias if bias is not None else lay.effective(o)[0].new_zeros(lay.parts(o)[-1].out_features)
        ResidualNorm, BiasOnly = _modules()
        if L.attn_dead.startswith("norm:"):
            norm_path = L.attn_dead[5:]
            view.set(L.attention, ResidualNorm(view.get(norm_path), bias, as_tuple=L.attn_tuple))
            return original, f"replaced by {norm_path}(x + {L.o}.bias): all {heads} heads dead"
        view.set(L.attention, BiasOnly(bias, as_tuple=L.attn_tuple))
        return original, f"replaced by {L.o}.bias (the layer adds x and normalizes): all {heads} heads dead"
    if L.heads_fixed:
        return [], f"{len(dead)} dead head(s) kept: {L.heads_fixed}"
    if len(dead) == heads:  # no replacement for this family: keep one dead head, never a width of 0
        dead, original = dead[1:], original[1:]
    linears = [view.get(p) for p, _ in view.head_linears()] + [view.get(L.o)]
    if L.native_prune and all(isinstance(m, _linear()) for m in linears):
        model.prune_heads({view.index: original})  # transformers slices and records config.pruned_heads
    else:
        _slice_heads(model, view, dead, original)
    kept = "; one dead head kept (no replacement for this family)" if view.num_heads() and len(
        dead_heads(view)) == view.num_heads() else ""
    return original, f"{len(dead)} of {heads} heads removed{kept}"


def _linear():
    import torch

    return torch.nn.Linear


def _slice_heads(model: Any, view: lay.LayerView, dead: list[int], original: list[int]) -> None:
    """Remove heads by slicing the per-head rows of q, k, v (or of one fused Wqkv, and the family's extra per-head
    projections) and the output projection's columns: transformers' prune_heads where it has none, or where a
    projection is a low-rank Sequential (its prune_linear_layer wants a Linear)."""
    import torch

    L = view.layout
    heads = view.num_heads()
    size = int(view.get(L.heads[1])) // heads
    alive = [h for h in range(heads) if h not in set(dead)]
    for path, rows in view.head_rows(alive).items():
        view.set(path, lay.take_rows(view.get(path), torch.tensor(rows)))
    view.set(L.o, lay.take_cols(view.get(L.o), torch.tensor([h * size + i for h in alive for i in range(size)])))
    view.set(L.heads[0], heads - len(dead))
    view.set(L.heads[1], (heads - len(dead)) * size)
    attention = view.get(L.attention)
    attention.pruned_heads = set(getattr(attention, "pruned_heads", set())) | set(original)
    if L.native_prune:  # the family's config can record it (from_pretrained prunes again on load)
        pruned = model.config.pruned_heads
        pruned[view.index] = sorted(set(pruned.get(view.index, [])) | set(original))


def _compact_ffns(view: lay.LayerView) -> str:
    import torch

    done = []
    for ffn in view.ffn_paths():
        width = lay.parts(view.get(ffn[1]))[0].in_features
        dead = dead_neurons(view, ffn)
        if not dead:
            continue
        replace = view.layout.ffn_dead
        if len(dead) == width and replace is not None:
            _, bias = lay.effective(view.get(ffn[1]))
            bias = bias if bias is not None else torch.zeros(lay.parts(view.get(ffn[1]))[-1].out_features)
            ResidualNorm, BiasOnly = _modules()
            for path, kind in replace.items():
                module = (torch.nn.Identity() if kind == "identity" else BiasOnly(bias, as_tuple=0)
                          if kind == "bias" else ResidualNorm(view.get(kind[5:]), bias, as_tuple=0))
                view.set(path, module)
            what = " + ".join(f"{p} -> {k}" for p, k in replace.items())
            done.append(f"replaced: all {width} neurons dead ({what}: norm(x + {ffn[1]}.bias))")
            continue
        if len(dead) == width:  # no replacement for this family: keep one dead neuron
            dead = dead[1:]
        keep = sorted(set(range(width)) - set(dead))
        view.set(ffn[0], lay.take_rows(view.get(ffn[0]), torch.tensor(view.ffn_rows(ffn, keep))))
        view.set(ffn[1], lay.take_cols(view.get(ffn[1]), torch.tensor(keep)))
        done.append(f"{ffn[0]}: {len(dead)} of {width} neurons removed")
    return "; ".join(done) or "kept"
