"""What a sentence-transformers folder says beyond the transformers checkpoint: which kind of model it is
(SentenceTransformer, CrossEncoder, SparseEncoder), and the modules after the transformer (pooling, Dense, Normalize,
SPLADE pooling), its prompts, Matryoshka dimension and score activation.

Read from the files alone (no sentence-transformers import, no code run), in both layouts in use: 5.x (`pooling_mode`,
`sentence_transformers.base.modules.*` module paths, `config_sentence_transformers.json` with `model_type`) and the
older one (`pooling_mode_*_tokens` booleans, `sentence_transformers.models.*`, a CrossEncoder's activation in
config.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import SourceError

# sentence-transformers' pooling modes (Pooling.POOLING_MODES) and the older boolean keys naming them
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Activations a Dense module or a CrossEncoder may name; each is exported as the torch.nn module of that name.
ACTIVATIONS = ("Identity", "Tanh", "Sigmoid", "ReLU", "GELU")
SPLADE_POOLING = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")


@dataclass(frozen=True)
class DenseSpec:
    """A sentence-transformers Dense module: a linear layer and its activation, on the pooled vector or per token."""

    path: str  # the module's folder inside the model folder
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of ACTIVATIONS
    per_token: bool  # applied to every token's vector (ColBERT-style projection), not to the pooled one


@dataclass(frozen=True)
class STFolder:
    """The sentence-transformers side of a model folder."""

    kind: str  # SentenceTransformer, CrossEncoder or SparseEncoder
    pooling: str | None = None  # one mode, or several joined by "+" (their vectors are concatenated, in that order)
    include_prompt: bool = True
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    truncate_dim: int | None = None
    max_length: int | None = None
    activation: str | None = None  # CrossEncoder: applied to the logits by predict()
    splade: tuple[str, str] | None = None  # SparseEncoder: (pooling_strategy, activation_function)

    def implied_task(self, num_labels: int) -> str:
        """The bertship task this folder is used as."""
        if self.kind == "CrossEncoder":
            return "rerank" if num_labels == 1 else "sequence-classification"
        if self.kind == "SparseEncoder":
            return "sparse-embedding"
        if self.pooling is None and any(d.per_token for d in self.dense):
            return "multi-vector"
        return "sentence-embedding"


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not valid JSON ({exc}) — restore the file from the checkpoint") from None


def _activation(name: str | None, where: Path) -> str:
    """torch.nn.modules.activation.Tanh -> Tanh; anything outside ACTIVATIONS is refused (never imported)."""
    short = (name or "torch.nn.modules.linear.Identity").rsplit(".", 1)[-1]
    if not (name or "torch.").startswith("torch.") or short not in ACTIVATIONS:
        raise SourceError(f"{where}: activation {name!r} is not one bertship exports ({', '.join(ACTIVATIONS)} from "
                          "torch.nn) — bertship never imports a checkpoint's own code; export with --task "
                          "feature-extraction and apply it in your app")
    return short


def pooling_mode(cfg: dict[str, Any], where: Path) -> str:
    """The Pooling module's mode(s) from either layout, as "mean" or "cls+mean"."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_POOLING.items() if cfg.get(key)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if not modes or unknown:
        raise SourceError(f"{where}: pooling mode {unknown or modes!r} is not one of {', '.join(POOLING_MODES)} — "
                          "fix the config, or export with --task feature-extraction and pool in your app")
    return "+".join(modes)


def read(root: Path) -> STFolder | None:
    """The sentence-transformers configuration of `root`, or None for a plain transformers folder."""
    st_config = root / "config_sentence_transformers.json"
    meta = _json(st_config) if st_config.is_file() else {}
    modules_path = root / "modules.json"
    config = _json(root / "config.json") if (root / "config.json").is_file() else {}
    legacy_ce = config.get("sentence_transformers", {}).get("activation_fn") if isinstance(
        config.get("sentence_transformers"), dict) else None
    legacy_ce = legacy_ce or config.get("sbert_ce_default_activation_function")
    if not modules_path.is_file():
        if meta.get("model_type") == "CrossEncoder" or legacy_ce:  # CrossEncoder folders before 5.x had no modules
            named = meta.get("activation_fn") or legacy_ce
            return STFolder("CrossEncoder", activation=_activation(named, root) if named else None,
                            max_length=_max_length(root))
        return None
    kind = meta.get("model_type") or "SentenceTransformer"
    found: dict[str, Any] = {"dense": []}
    modules = _json(modules_path)
    for module in modules:
        name = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = root / module.get("path", "")
        cfg_path = folder / "config.json"
        if name == "Transformer" or name == "MLMTransformer":
            continue
        if name == "Pooling":
            cfg = _json(cfg_path) if cfg_path.is_file() else {}
            found["pooling"] = pooling_mode(cfg, cfg_path)
            found["include_prompt"] = bool(cfg.get("include_prompt", True))
        elif name == "Dense":
            cfg = _json(cfg_path)
            per_token = cfg.get("module_input_name", "sentence_embedding") == "token_embeddings" or \
                "pooling" not in found
            found["dense"].append(DenseSpec(module.get("path", ""), int(cfg["in_features"]), int(cfg["out_features"]),
                                            bool(cfg.get("bias", True)),
                                            _activation(cfg.get("activation_function"), cfg_path), per_token))
        elif name == "Normalize":
            found["normalize"] = True
        elif name == "SpladePooling":
            cfg = _json(cfg_path) if cfg_path.is_file() else {}
            strategy, act = cfg.get("pooling_strategy", "max"), cfg.get("activation_function", "relu")
            if strategy not in SPLADE_POOLING or act not in SPLADE_ACTIVATIONS:
                raise SourceError(f"{cfg_path}: SPLADE pooling {strategy!r} with {act!r} is not one sentence-"
                                  f"transformers defines ({SPLADE_POOLING}, {SPLADE_ACTIVATIONS}) — fix the config")
            found["splade"] = (strategy, act)
        else:
            raise SourceError(f"{modules_path}: module {module.get('type')!r} is not one bertship exports (Transformer, "
                              "Pooling, Dense, Normalize, SpladePooling) — export with --task feature-extraction and "
                              "apply the rest in your app")
    if kind == "SparseEncoder" and "splade" not in found:
        raise SourceError(f"{modules_path}: a SparseEncoder without SpladePooling (e.g. an inference-free SPLADE with "
                          "a Router) is not supported — export its query and document encoders separately")
    truncate = meta.get("truncate_dim")
    return STFolder(
        kind, found.get("pooling"), found.get("include_prompt", True), tuple(found["dense"]),
        found.get("normalize", False), {k: v for k, v in (meta.get("prompts") or {}).items() if isinstance(v, str)},
        meta.get("default_prompt_name"), int(truncate) if truncate else None, _max_length(root),
        # no activation named: sentence-transformers' default (Sigmoid for one label), chosen where the task is known
        _activation(meta["activation_fn"], st_config) if kind == "CrossEncoder" and meta.get("activation_fn") else None,
        found.get("splade"))


def _max_length(root: Path) -> int | None:
    sbert = root / "sentence_bert_config.json"
    return _json(sbert).get("max_seq_length") if sbert.is_file() else None


def load_dense(root: Path, spec: DenseSpec, allow_pickle: bool):
    """The Dense module as a torch Sequential(Linear, activation) with its saved weights."""
    import torch

    folder = root / spec.path
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        if not allow_pickle:
            raise SourceError(f"{folder} has only pickle weights (pytorch_model.bin), and loading a pickle runs code — "
                              "convert them to safetensors, or pass --allow-pickle if you trust the file")
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise SourceError(f"{folder} has no weights (model.safetensors) — copy the whole sentence-transformers folder")
    linear = torch.nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
    try:
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    except RuntimeError as exc:
        raise SourceError(f"{folder}: the weights do not fit its config.json ({exc}) — copy the folder again") from None
    return torch.nn.Sequential(linear, getattr(torch.nn, spec.activation)()).eval()
