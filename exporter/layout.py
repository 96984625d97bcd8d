"""Where each family keeps its attention and feed-forward weights: one table of module paths, not a class per family.

Sparsity analysis, compaction and pruning all read layers through `layers(model)`. A "linear" here is an nn.Linear
or a low-rank factorized one, nn.Sequential(Linear(in, r, bias=False), Linear(r, out)); both are sliced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import SourceError


@dataclass(frozen=True)
class Layout:
    """Module paths inside one transformer layer of a family ("*" expands over a ModuleList)."""

    layer_lists: tuple[str, ...]  # under model.base_model; ALBERT has one list per layer group
    attention: str  # the module with prune_heads()
    q: str
    k: str
    v: str
    o: str
    heads: tuple[str, ...]  # attributes holding the head count, then the width (heads * head size)
    ffns: tuple[tuple[str, str, str], ...]  # (input linear, output linear, activation)
    # What replaces a sublayer with nothing left ("norm:PATH": norm(x + output bias) where the sublayer adds the
    # residual and normalizes itself; "bias": the output bias, where the layer adds and normalizes outside; None: no
    # replacement, one dead head or neuron is kept instead so that no tensor has width 0).
    attn_dead: str | None
    ffn_dead: dict[str, str] | None  # per module of the FFN: "identity", "bias" or "norm:PATH"
    note: str = ""
    fused_qkv: bool = False  # q, k and v are one linear (the path in q) whose rows are [q; k; v]
    glu: bool = False  # the FFN's input linear has 2 rows per neuron, [value; gate] halves: a neuron is both
    native_prune: bool = True  # transformers' prune_heads() exists for the family (else heads are sliced here)
    head_extras: tuple[str, ...] = ()  # other linears with rows per head (DeBERTa's unshared position projections)
    attn_tuple: int = 1  # length of the tuple the attention module returns (a replacement pads it with None)
    heads_fixed: str = ""  # why some dead heads of a layer cannot be removed (empty: they can)


_BERT = Layout(("encoder.layer",), "attention", "attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense", ("attention.self.num_attention_heads", "attention.self.all_head_size"),
               (("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"),),
               "norm:attention.output.LayerNorm", {"intermediate": "identity", "output": "norm:output.LayerNorm"})

LAYOUTS: dict[str, Layout] = {
    "bert": _BERT,
    "roberta": _BERT,
    "electra": _BERT,  # ElectraLayer is BertLayer; the factorized embedding projection is outside the layers
    "mpnet": Layout(("encoder.layer",), "attention", "attention.attn.q", "attention.attn.k", "attention.attn.v",
                    "attention.attn.o", ("attention.attn.num_attention_heads", "attention.attn.all_head_size"),
                    (("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"),),
                    "norm:attention.LayerNorm", {"intermediate": "identity", "output": "norm:output.LayerNorm"},
                    heads_fixed="MPNet adds one relative-position bias with a row per head, computed once for all "
                                "layers, so a layer cannot have fewer heads than the others: its dead heads are kept "
                                "(outputs exact, no faster); an attention with every head dead is still replaced"),
    # DeBERTa-v2/v3 has no prune_heads(): heads are sliced here, with the position projections of configs that do
    # not share them with key/query (share_att_key false); head pruning cannot be written to its config.
    "deberta-v2": Layout(("encoder.layer",), "attention", "attention.self.query_proj", "attention.self.key_proj",
                         "attention.self.value_proj", "attention.output.dense",
                         ("attention.self.num_attention_heads", "attention.self.all_head_size"),
                         (("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"),),
                         "norm:attention.output.LayerNorm", {"intermediate": "identity", "output": "norm:output.LayerNorm"},
                         "DeBERTa: heads are sliced by bertship (transformers has no prune_heads for it) and cannot "
                         "be recorded in config.json; export the compacted model from memory (bertship does)",
                         native_prune=False, head_extras=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
                         attn_tuple=2),
    # ModernBERT: pre-norm layers (x + attn(norm(x)), x + mlp(norm(x))), so a dead sublayer leaves its output bias;
    # one Wqkv linear; a GLU feed-forward whose neuron j is rows j and j + width of Wi (value and gate) together.
    "modernbert": Layout(("layers",), "attn", "attn.Wqkv", "attn.Wqkv", "attn.Wqkv", "attn.Wo",
                         ("attn.num_heads", "attn.all_head_size"), (("mlp.Wi", "mlp.Wo", "mlp.act"),),
                         "bias", {"mlp": "bias"},
                         "ModernBERT: heads are sliced from the fused Wqkv by bertship and GLU neurons are removed as "
                         "value/gate pairs; neither can be recorded in config.json, so export the compacted model from "
                         "memory (bertship does)",
                         fused_qkv=True, glu=True, native_prune=False),
    "distilbert": Layout(("transformer.layer",), "attention", "attention.q_lin", "attention.k_lin", "attention.v_lin",
                         "attention.out_lin", ("attention.n_heads", "attention.dim"),
                         (("ffn.lin1", "ffn.lin2", "ffn.activation"),), "bias", {"ffn": "bias"}),
    # ALBERT shares weights: each group's layers run num_hidden_layers / num_hidden_groups times.
    "albert": Layout(("encoder.albert_layer_groups.*.albert_layers",), "attention", "attention.query",
                     "attention.key", "attention.value", "attention.dense",
                     ("attention.num_attention_heads", "attention.all_head_size"),
                     (("ffn", "ffn_output", "activation"),), "norm:attention.LayerNorm",
                     {"ffn": "identity", "activation": "identity", "ffn_output": "bias"}),
    "mobilebert": Layout(("encoder.layer",), "attention", "attention.self.query", "attention.self.key",
                         "attention.self.value", "attention.output.dense",
                         ("attention.self.num_attention_heads", "attention.self.all_head_size"),
                         (("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"),
                          ("ffn.*.intermediate.dense", "ffn.*.output.dense", "ffn.*.intermediate.intermediate_act_fn")),
                         None, None,
                         "MobileBERT: heads and FFN neurons (main and stacked FFNs) are analyzed and removed; the "
                         "bottleneck linears get unstructured statistics only; a sublayer with nothing left is kept "
                         "as is (its NoNorm/bottleneck residual has no drop-in replacement here)"),
}


@dataclass
class LayerView:
    """One distinct transformer layer: its module, how often the forward pass runs it, and its named parts."""

    index: int
    module: Any
    uses: int
    layout: Layout

    def get(self, path: str) -> Any:
        """The submodule or attribute at a dotted path."""
        obj = self.module
        for part in path.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def set(self, path: str, value: Any) -> None:
        """Replace the submodule or attribute at a dotted path."""
        parent, _, name = path.rpartition(".")
        setattr(self.get(parent) if parent else self.module, name, value)

    def ffn_paths(self) -> list[tuple[str, str, str]]:
        """Every (input, output, activation) path triple, "*" expanded."""
        found = []
        for triple in self.layout.ffns:
            if "*" not in triple[0]:
                found.append(triple)
                continue
            head = triple[0].split(".*.")[0]
            count = len(self.get(head)) if _has(self.module, head) else 0
            found += [tuple(p.replace("*", str(i)) for p in triple) for i in range(count)]
        # an FFN that compaction replaced has no linears left to analyze
        return [t for t in found if _has(self.module, t[0]) and _has(self.module, t[1])]

    def attends(self) -> bool:
        """Whether the attention is still there (compaction replaces one with no head left by a module without heads)."""
        return _has(self.module, self.layout.heads[0])

    def head_linears(self) -> list[tuple[str, int]]:
        """(path, first row) of every linear section whose rows are per head on the input side: q, k, v (sections of
        one fused linear), then the family's extras that this model has."""
        L = self.layout
        if L.fused_qkv:
            width = int(self.get(L.heads[1]))
            found = [(L.q, 0), (L.q, width), (L.q, 2 * width)]
        else:
            found = [(L.q, 0), (L.k, 0), (L.v, 0)]
        return found + [(p, 0) for p in L.head_extras if _has(self.module, p) and self.get(p) is not None]

    def head_rows(self, heads: list[int]) -> dict[str, list[int]]:
        """Per input-side linear path, the rows that belong to `heads` (current numbering)."""
        size = int(self.get(self.layout.heads[1])) // max(self.num_heads(), 1)
        rows: dict[str, list[int]] = {}
        for path, first in self.head_linears():
            rows.setdefault(path, []).extend(first + h * size + i for h in sorted(heads) for i in range(size))
        return rows

    def value(self) -> tuple[Any, Any]:
        """(weight [all_head_size, in], bias or None) of the value projection."""
        L = self.layout
        weight, bias = effective(self.get(L.v), L.v)
        if L.fused_qkv:
            width = int(self.get(L.heads[1]))
            return weight[2 * width:3 * width], None if bias is None else bias[2 * width:3 * width]
        return weight, bias

    def ffn_width(self, ffn: tuple[str, str, str]) -> int:
        """Neurons of one FFN (the output linear's inputs)."""
        return parts(self.get(ffn[1]))[0].in_features

    def ffn_rows(self, ffn: tuple[str, str, str], neurons: list[int]) -> list[int]:
        """Rows of the FFN's input linear that compute `neurons` (GLU: the value row and the gate row of each)."""
        width = self.ffn_width(ffn)
        return sorted(list(neurons) + ([n + width for n in neurons] if self.layout.glu else []))

    def num_heads(self) -> int:
        """Heads the layer's attention has now (0 once compaction replaced it)."""
        return int(self.get(self.layout.heads[0])) if self.attends() else 0


def _has(module: Any, path: str) -> bool:
    try:
        for part in path.split("."):
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        return True
    except (AttributeError, IndexError):
        return False


def layout_of(model: Any) -> Layout:
    """The layout of a model's family (model_type from its config)."""
    from .families import family_of

    return LAYOUTS[family_of(getattr(model.config, "model_type", None)).name]


def layers(model: Any) -> list[LayerView]:
    """The distinct transformer layers of a model, in order (ALBERT: its shared layers, each with its use count)."""
    layout = layout_of(model)
    base = model.base_model
    config = model.config
    found: list[LayerView] = []
    for pattern in layout.layer_lists:
        before, _, after = pattern.partition(".*.")
        groups = [_get(base, before)] if not after else [_get(g, after) for g in _get(base, before)]
        uses = config.num_hidden_layers // config.num_hidden_groups if after else 1
        for group in groups:
            for module in group:
                found.append(LayerView(len(found), module, uses, layout))
    return found


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# ---- linears: nn.Linear or a chain of them (low-rank factorized) ----

def parts(module: Any, name: str = "") -> list[Any]:
    """The nn.Linear modules a linear is made of; SourceError for anything else."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return [module]
    if isinstance(module, torch.nn.Sequential) and len(module) and all(isinstance(m, torch.nn.Linear) for m in module):
        return list(module)
    raise SourceError(f"{name or 'a projection'} is a {type(module).__name__}, not a Linear or a Sequential of Linears "
                      "— bertship analyzes and compacts only these (factorize into nn.Sequential(Linear, Linear))")


def effective(module: Any, name: str = "") -> tuple[Any, Any]:
    """(weight [out, in], bias or None) of the map the linear computes, factors multiplied out."""
    chain = parts(module, name)
    weight, bias = chain[0].weight.detach(), chain[0].bias
    bias = None if bias is None else bias.detach()
    for lin in chain[1:]:
        weight = lin.weight.detach() @ weight
        bias = (lin.weight.detach() @ bias if bias is not None else None)
        if lin.bias is not None:
            bias = lin.bias.detach() if bias is None else bias + lin.bias.detach()
    return weight, bias


def macs(module: Any) -> int:
    """Multiply-accumulates per token."""
    return sum(lin.in_features * lin.out_features for lin in parts(module))


def bias_size(module: Any) -> int:
    """Size of the bias the linear adds last (0 without one)."""
    bias = parts(module)[-1].bias
    return 0 if bias is None else bias.numel()


def in_features(module: Any) -> int:
    """Inputs of the linear's last factor: what one output row costs per token."""
    return parts(module)[-1].in_features


def out_features(module: Any) -> int:
    """Outputs of the linear's first factor: what one input column costs per token."""
    return parts(module)[0].out_features


def take_rows(module: Any, keep: Any) -> Any:
    """The linear with only the output features `keep` (a LongTensor of indices)."""
    from transformers.pytorch_utils import prune_linear_layer

    chain = parts(module)
    last = prune_linear_layer(chain[-1], keep, dim=0)
    return last if len(chain) == 1 else type(module)(*chain[:-1], last)


def take_cols(module: Any, keep: Any) -> Any:
    """The linear with only the input features `keep`."""
    from transformers.pytorch_utils import prune_linear_layer

    chain = parts(module)
    first = prune_linear_layer(chain[0], keep, dim=1)
    return first if len(chain) == 1 else type(module)(first, *chain[1:])


def check_pruned_heads(raw: dict[str, Any]) -> None:
    """Refuse a config.json whose pruned_heads name a layer or head that does not exist, or every head of a layer."""
    pruned = raw.get("pruned_heads") or {}
    if not pruned:
        return
    heads = raw.get("num_attention_heads") or raw.get("n_heads")
    layers = raw.get("num_hidden_layers") or raw.get("n_layers")
    if raw.get("model_type") == "albert":
        layers = raw.get("num_hidden_groups", 1) * raw.get("inner_group_num", 1)
    fix = "fix pruned_heads in config.json (or re-save the model with save_pretrained)"
    for key, listed in pruned.items():
        if not str(key).isdigit() or not 0 <= int(key) < layers:
            raise SourceError(f"config.json pruned_heads names layer {key!r}, but the model has {layers} — {fix}")
        bad = [h for h in listed if not isinstance(h, int) or not 0 <= h < heads]
        if bad:
            raise SourceError(f"config.json pruned_heads[{key}] names head {bad[0]!r}, but layers have {heads} — {fix}")
        if len(set(listed)) >= heads:
            raise SourceError(f"config.json pruned_heads removes every head of layer {key}, which transformers cannot "
                              f"run — keep at least one head there, or drop the layer")


def weights_mismatch(root: Path, exc: Exception) -> SourceError:
    """One line for weights that do not fit config.json (transformers' message spans several lines)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)
    return SourceError(f"the weights in {str(root)!r} do not fit config.json ({detail}) — save config and weights "
                       "together (save_pretrained), or fix the sizes and pruned_heads in config.json")
