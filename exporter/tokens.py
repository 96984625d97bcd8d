"""Progressive token elimination (dynamic inference, Ganesh et al. §3.6): after each layer only the tokens that
received the most attention go on, so later layers run on fewer tokens (PoWER-BERT, Goyal et al. 2020; the
Length-Adaptive Transformer, Kim & Cho 2021).

A retention schedule gives, per layer but the last, the share of a text's tokens kept after it (non-increasing).
After layer l a text keeps k = ceil(share_l × its token count) tokens: its first token (CLS, which the classifier and
CLS pooling read) and the tokens with the most attention received from the text's real tokens, summed over heads
(PoWER-BERT's significance score). In the graph that is TopK + Gather with k computed from the attention mask, so it
runs at any batch and length on both backends; each text keeps its own count (a wider batch is masked past it), so a
text's output does not depend on its batch-mates or padding.

`bertship tokens` searches the schedule on held-out text against --max-accuracy-drop (a classifier) or --min-cosine
(sentence embeddings), optionally recovers with a short distillation from the unchanged model (every weight trains,
the schedule applied), and writes the model folder plus tokens.json; `bertship export` builds the eliminating graph.
BERT-style encoders (bert, roberta, xlm-roberta, electra) whose layers return their attention probabilities.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from bertship.runtimes.errors import SourceError, UsageError

TOKENS_FILE = "tokens.json"
FORMAT = 1
FAMILIES = ("bert", "roberta", "electra")  # Family names (roberta covers xlm-roberta)
TASKS = ("sequence-classification", "sentence-embedding")
# candidate schedules: keep share after layer l = RATE ** l (geometric, as LAT's length drop), cheapest first tried
RATES = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TEMPERATURE = 2.0


def check_schedule(schedule: Any, layers: int) -> list[float]:
    """A schedule as a list of `layers - 1` shares in (0, 1], non-increasing; UsageError otherwise."""
    if isinstance(schedule, str):
        try:
            schedule = [float(x) for x in schedule.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--schedule {schedule!r} is not a list of shares — write e.g. --schedule 0.9,0.8,0.7") \
                from None
    shares = list(schedule)
    if len(shares) != layers - 1:
        raise UsageError(f"a schedule gives the share of tokens kept after each layer but the last: {layers - 1} "
                         f"numbers for this {layers}-layer model, got {len(shares)}")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 for x in shares):
        raise UsageError(f"schedule {shares}: every share must be in (0, 1] (1 keeps every token)")
    if any(b > a for a, b in zip(shares, shares[1:])):
        raise UsageError(f"schedule {shares}: shares must not grow (a dropped token does not come back)")
    return [float(x) for x in shares]


def kept(schedule: list[float], tokens: int) -> list[int]:
    """Tokens a text of `tokens` tokens has in each layer (the first layer sees them all)."""
    return [tokens] + [max(1, math.ceil(share * tokens)) for share in schedule]


def cost(schedule: list[float]) -> float:
    """Layers' work relative to the full model's, counted in tokens per layer (what the linear layers scale with)."""
    return (1.0 + sum(schedule)) / (len(schedule) + 1)


def geometric(rate: float, layers: int) -> list[float]:
    return [round(rate ** (i + 1), 4) for i in range(layers - 1)]


def base_of(model: Any) -> Any:
    return getattr(model, "base_model", model)


def layer_count(model: Any) -> int:
    return len(base_of(model).encoder.layer)


def check_model(model: Any, family: str, task: str) -> None:
    if family not in FAMILIES:
        raise UsageError(f"token elimination runs on BERT-style encoders ({', '.join(FAMILIES)}, xlm-roberta), not "
                         f"{family} — use early exit (`bertship exits`) or structured pruning for it")
    if task not in TASKS:
        hint = " — export it as --task sentence-embedding (pooled in the graph)" if task == "feature-extraction" else ""
        raise UsageError(f"token elimination applies to {' and '.join(TASKS)}, not {task}: a per-token output would "
                         f"lose the eliminated tokens{hint}")
    base = base_of(model)
    if not hasattr(base, "encoder") or not hasattr(base.encoder, "layer") or not hasattr(base, "embeddings"):
        raise SourceError(f"{type(model).__name__} has no embeddings/encoder.layer to run layer by layer — token "
                          "elimination needs a BERT-style model")


def make_eliminating(model: Any, schedule: list[float]):
    """A torch module running `model`'s encoder layer by layer with tokens eliminated after each layer; its
    `encode(input_ids, attention_mask, token_type_ids)` returns (hidden states of the kept tokens [B, k, H] with the
    first token first, their mask [B, k]); `encode_states` also each layer's (state, mask) after its elimination, what
    an off-ramp after that layer reads and what the next layer starts from (early exit on top: exporter.exits)."""
    import torch

    class Eliminating(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.schedule = list(schedule)

        def encode(self, input_ids, attention_mask, token_type_ids=None):
            h, mask, _ = self.encode_states(input_ids, attention_mask, token_type_ids)
            return h, mask

        def encode_states(self, input_ids, attention_mask, token_type_ids=None):
            """(h, mask, {layer (1-based, all but the last): (h, mask) after that layer's elimination})."""
            base = base_of(self.model)
            h = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            if getattr(base, "embeddings_project", None) is not None:  # ELECTRA's factorized embedding
                h = base.embeddings_project(h)
            mask = attention_mask.to(h.dtype)
            lengths = mask.sum(1)  # each text's own token count: what its shares are of
            width = int(h.shape[-1])
            states = {}
            for i, layer in enumerate(base.encoder.layer):
                ext = (1.0 - mask)[:, None, None, :] * torch.finfo(h.dtype).min
                out = layer(h, attention_mask=ext, output_attentions=True)
                h, probs = out[0], out[1]
                if i == len(self.schedule):
                    break
                # attention each token received from the text's real tokens, summed over heads (PoWER-BERT)
                score = (probs * mask[:, None, :, None]).sum(dim=(1, 2))
                position = torch.arange(score.shape[1], device=score.device)[None, :]
                score = torch.where(mask > 0, score, torch.full_like(score, -1e9))
                score = torch.where(position == 0, torch.full_like(score, 1e9), score)  # the first token stays
                keep = torch.clamp(torch.ceil(lengths * self.schedule[i]), min=1.0)
                k = keep.max().to(torch.int64)
                top = torch.topk(score, k, dim=1, largest=True, sorted=True).indices
                # the width as a number, not h's traced shape: a cut after this layer (early exit on top) must not
                # reach back into the layers before it for a size (OpenVINO resolves that shape through them)
                h = torch.gather(h, 1, top.unsqueeze(-1).expand(-1, -1, width))
                rank = torch.arange(top.shape[1], device=h.device)[None, :].to(h.dtype)
                mask = torch.gather(mask, 1, top) * (rank < keep[:, None]).to(h.dtype)
                states[i + 1] = (h, mask)
            return h, mask, states

        def logits(self, h):
            """The sequence classifier on the kept tokens (its first token is the text's first)."""
            m = self.model
            base = base_of(m)
            if getattr(base, "pooler", None) is not None and hasattr(m, "dropout"):
                return m.classifier(m.dropout(base.pooler(h)))
            return m.classifier(h)

    return Eliminating().eval()


def read_tokens(root: Path, model: Any) -> dict[str, Any] | None:
    """tokens.json of a folder written by `bertship tokens` (None without one), its schedule checked."""
    path = root / TOKENS_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        spec["schedule"] = check_schedule(spec["schedule"], layer_count(model))
    except (json.JSONDecodeError, KeyError, TypeError, UsageError) as exc:
        raise SourceError(f"{path} is not a tokens file bertship can read ({exc}) — re-run `bertship tokens`") from None
    if spec.get("format") != FORMAT:
        raise SourceError(f"{path} has format {spec.get('format')!r}, this bertship reads {FORMAT} — re-run "
                          "`bertship tokens`")
    return spec


def _batches(source: Any, texts: list[str], pairs: list[str] | None, batch: int, max_length: int):
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        enc = source.tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None, padding=True,
                               truncation=True, max_length=max_length, return_tensors="pt")
        yield idx, {k: enc[k] for k in source.family.inputs}


def outputs(source: Any, module: Any, texts: list[str], pairs: list[str] | None, max_length: int,
            batch: int = 32) -> np.ndarray:
    """Per text, the task's output with tokens eliminated by `module` (None: the unchanged model): logits for a
    classifier, the pooled (and normalized as configured) vector for sentence embeddings."""
    import torch

    from .heads import pool

    result: np.ndarray | None = None
    with torch.no_grad():
        for idx, feeds in _batches(source, texts, pairs, batch, max_length):
            value = task_value(source, module, feeds, pool)
            if result is None:
                result = np.zeros((len(texts), value.shape[-1]), dtype=np.float32)
            result[idx] = value.numpy()
    return result


def task_value(source: Any, module: Any, feeds: dict[str, Any], pool: Callable):
    """One batch's task output, eliminating with `module` or not (None)."""
    import torch

    if module is None:
        out = source.model(**feeds, return_dict=True)
        if source.task.name == "sequence-classification":
            return out.logits
        h, mask = out[0], feeds["attention_mask"]
    else:
        h, mask = module.encode(**feeds)
        if source.task.name == "sequence-classification":
            return module.logits(h)
    emb = pool(h, mask, source.pooling)
    for layer in source.dense:
        emb = layer(emb)
    return torch.nn.functional.normalize(emb, p=2.0, dim=-1) if source.normalize else emb


def _score(source: Any, got: np.ndarray, ref: np.ndarray, labels: list[int] | None) -> dict[str, float]:
    if source.task.name == "sequence-classification":
        truth = np.asarray(labels) if labels is not None else ref.argmax(-1)
        return {"accuracy": float((got.argmax(-1) == truth).mean()),
                "agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())}
    a = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    b = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(1)
    return {"cosine_min": float(cos.min()), "cosine_p1": float(np.percentile(cos, 1)), "cosine_mean": float(cos.mean())}


def recover(source: Any, schedule: list[float], texts: list[str], pairs: list[str] | None, steps: int, lr: float,
            batch: int, max_length: int, seed: int, log: Callable[[str], None]) -> list[float]:
    """Distil the model with tokens eliminated from the unchanged model (every weight trains): KL at temperature 2
    on a classifier's logits, 1 − cosine on sentence embeddings. Returns the loss every 50 steps."""
    import copy

    import torch

    from .heads import pool

    teacher = copy.deepcopy(source.model).eval()
    student = make_eliminating(source.model, schedule)
    student.train()
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in source.model.parameters() if p.requires_grad], lr=lr)
    batches = list(_batches(source, texts, pairs, batch, max_length))
    rng = np.random.default_rng(seed)
    losses, start = [], time.perf_counter()
    teach = SimpleNamespace(model=teacher, task=source.task, pooling=source.pooling, dense=source.dense,
                            normalize=source.normalize)  # the teacher as a Source-like object for task_value
    for step in range(steps):
        _, feeds = batches[int(rng.integers(len(batches)))]
        with torch.no_grad():
            target = task_value(teach, None, feeds, pool)
        got = task_value(source, student, feeds, pool)
        if source.task.name == "sequence-classification":
            loss = torch.nn.functional.kl_div(torch.log_softmax(got / TEMPERATURE, -1),
                                              torch.softmax(target / TEMPERATURE, -1),
                                              reduction="batchmean") * TEMPERATURE ** 2
        else:
            loss = (1 - torch.nn.functional.cosine_similarity(got, target, dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(float(loss.detach()), 5))
            log(f"[bertship] tokens   recovery step {step + 1}/{steps}: loss {losses[-1]:.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    source.model.eval()
    return losses


def search_tokens(path: str | Path, out: str | Path, *, eval_data: str | Path, data: str | Path | None = None,
                  task: str | None = None, schedule: str | None = None, max_accuracy_drop: str | None = None,
                  min_cosine: str | None = None, recover_steps: int = 0, lr: float = 2e-5, batch_size: int = 32,
                  max_length: int = 128, seed: int = 0, force: bool = False,
                  log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """`bertship tokens`: a retention schedule for a model folder, searched (or given) and judged on held-out text,
    optionally recovered; writes `out` (the model plus tokens.json) and returns tokens.json."""
    from bertship.runtimes.evaluate import read_eval_data

    from . import package
    from .fallback import parse_drop, parse_min_cosine
    from .load import load_folder
    from .prune import WEIGHT_FILES

    if recover_steps < 0 or (recover_steps and data is None):
        raise UsageError("--recover-steps distils on training text — pass --data train.tsv, or drop it")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr} — e.g. --lr 2e-5")
    root, out = Path(path), Path(out)
    package.check_folder_out(out, force, TOKENS_FILE, "tokens")
    log(f"[bertship] tokens   loading {root} …")
    source = load_folder(root, task)
    check_model(source.model, source.family.name, source.task.name)
    if source.exits is not None:
        raise UsageError(f"{root} has off-ramps ({root / 'exits.json'}), trained on the states of every token — run "
                         "`bertship tokens` on the fine-tuned model first, then `bertship exits` on its output")
    classifier = source.task.name == "sequence-classification"
    if max_accuracy_drop is not None and min_cosine is not None:
        raise UsageError("pass --max-accuracy-drop (a classifier) or --min-cosine (embeddings), not both")
    if classifier and min_cosine is not None:
        raise UsageError("--min-cosine judges sentence embeddings — use --max-accuracy-drop for a classifier")
    if not classifier and max_accuracy_drop is not None:
        raise UsageError("--max-accuracy-drop judges a classifier — use --min-cosine for sentence embeddings")
    limit = (parse_drop(max_accuracy_drop or "1%") if classifier else parse_min_cosine(min_cosine or "0.99"))
    layers = layer_count(source.model)
    id2label = {str(k): v for k, v in (getattr(source.model.config, "id2label", None) or {}).items()}
    held = read_eval_data(eval_data, source.task.name, id2label)
    length = min(max_length, source.max_length)
    ref = outputs(source, None, held.texts, held.pairs, length)
    base = _score(source, ref, ref, held.labels)

    def judge(shares: list[float]) -> dict[str, Any]:
        got = outputs(source, make_eliminating(source.model, shares), held.texts, held.pairs, length)
        m = _score(source, got, ref, held.labels)
        within = (m["accuracy"] >= base["accuracy"] * (1 - limit) - 1e-12) if classifier else m["cosine_min"] >= limit
        return {"schedule": shares, "cost": round(cost(shares), 4), **{k: round(v, 5) for k, v in m.items()},
                "within": bool(within)}

    tried = []
    if schedule is not None:
        chosen = check_schedule(schedule, layers)
        tried.append(judge(chosen))
        log(f"[bertship] tokens   schedule {chosen}: {_line(tried[-1], classifier)}")
    else:
        for rate in RATES:  # cheapest first: the first within the limit is kept
            tried.append(judge(geometric(rate, layers)))
            log(f"[bertship] tokens   keep {rate:g}^layer {tried[-1]['schedule']}: {_line(tried[-1], classifier)}")
            if tried[-1]["within"]:
                break
        chosen = next((t["schedule"] for t in tried if t["within"]), None)
        if chosen is None:
            chosen = tried[-1]["schedule"]
            if not recover_steps:
                raise UsageError(f"no schedule down to keep {RATES[-1]:g}^layer keeps "
                                 + ("the accuracy within the drop" if classifier else "--min-cosine")
                                 + " on --eval-data — add --recover-steps N with --data, or loosen the limit")
    losses: list[float] = []
    after = None
    if recover_steps:
        train = read_eval_data(data, source.task.name, id2label)
        log(f"[bertship] tokens   recovery: {recover_steps} steps of {batch_size} on --data, lr {lr:g}, distilling "
            "from the unchanged model …")
        losses = recover(source, chosen, train.texts, train.pairs, recover_steps, lr, batch_size, length, seed, log)
        after = judge(chosen)
        log(f"[bertship] tokens   after recovery: {_line(after, classifier)}")
    final = after or next(t for t in tried if t["schedule"] == chosen)
    spec = {"format": FORMAT, "schedule": chosen, "task": source.task.name, "layers": layers,
            "score": "attention received from the text's real tokens, summed over heads (PoWER-BERT); the first "
                     "token always kept",
            "kept_at": {str(n): kept(chosen, n) for n in (16, 32, 64, 128)},
            "judged_on": {"data": str(eval_data), "texts": len(held.texts), "full_model": base,
                          "limit": {"max_accuracy_drop" if classifier else "min_cosine": limit}},
            "search": [{k: v for k, v in t.items()} for t in tried], "result": final,
            "recovery": {"steps": recover_steps, "lr": lr, "batch_size": batch_size, "data": str(data) if data else None,
                         "teacher": "the unchanged model", "losses": losses} if recover_steps else None}
    def write(staging: Path) -> None:  # recovered weights replace the folder's own
        if recover_steps:
            source.model.save_pretrained(staging, safe_serialization=True)
        (staging / TOKENS_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    package.write_folder(root, out, lambda name: bool(recover_steps) and name in (*WEIGHT_FILES, "config.json"), write)
    return spec


def _line(t: dict[str, Any], classifier: bool) -> str:
    what = (f"accuracy {t['accuracy']:.4f}, agreement {t['agreement']:.4f}" if classifier else
            f"cosine min {t['cosine_min']:.4f}, p1 {t['cosine_p1']:.4f}")
    return f"{what}, {t['cost']:.2f} of the layer work{'' if t['within'] else ' (outside the limit)'}"


def summary(spec: dict[str, Any]) -> str:
    """`bertship analyze`'s lines for a folder with a token schedule."""
    lines = [f"token elimination: keeps {', '.join(f'{x:g}' for x in spec['schedule'])} of each text's tokens after "
             f"layers 1-{len(spec['schedule'])} ({spec['result']['cost']:.2f} of the layer work)"]
    for n, counts in spec["kept_at"].items():
        lines.append(f"  a {n}-token text: {' → '.join(map(str, counts))} tokens through the layers")
    return "\n".join(lines)


def plot(spec: dict[str, Any], path: str | Path) -> Path:
    """Tokens per layer for texts of 16 to 128 tokens, and the searched schedules' cost against their score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for n, counts in spec["kept_at"].items():
        a.plot(range(1, len(counts) + 1), counts, marker="o", label=f"{n}-token text")
    a.set_xlabel("layer")
    a.set_ylabel("tokens it runs on")
    a.set_title("Tokens per layer under the schedule")
    a.legend(fontsize=8)
    metric = "accuracy" if "accuracy" in spec["result"] else "cosine_min"
    for t in spec["search"]:
        b.scatter(t["cost"], t[metric], color="tab:blue" if t["within"] else "tab:gray")
    b.scatter(spec["result"]["cost"], spec["result"][metric], color="tab:red", label="kept")
    b.set_xlabel("layer work (share of the full model's)")
    b.set_ylabel(f"{metric} on held-out text")
    b.set_title("Schedules tried")
    b.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
