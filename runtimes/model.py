"""The app-facing model: load an artifact (checksums first), run feeds, encode text, or call the task's own method.

    model.embed(texts)              feature-extraction (mean-pooled) and sentence-embedding artifacts
    model.classify(texts)           sequence-classification: [{label, score}] per text
    model.answer(question, context) question-answering: {answer, score, start, end} (char offsets in the context)
    model.tag(texts)                token-classification: per text, [{word, label, score, start, end}]
    model.rerank(query, documents)  rerank (cross-encoders): [{index, score, document}], best first
    model.embed_sparse(texts)       sparse-embedding (SPLADE): per text, SparseVector(indices, values)
    model.embed_multi(texts)        multi-vector (ColBERT-style): per text, a [tokens, dim] matrix; tasks.maxsim scores

A loaded model holds no per-call state, so one instance serves many threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import artifact, backends, tasks
from .errors import UsageError
from .batcher import measure_overhead, plan_batches
from .runner import Runner
from .tokenizer import TextEncoder, check_truncation, truncated

Batch = tuple[list[int], dict[str, np.ndarray], dict[str, np.ndarray]]


class Model:
    """A loaded artifact on one backend. Safe to share between threads."""

    def __init__(
        self, root: Path, manifest: dict[str, Any], runner: Runner, encoder: TextEncoder, truncation: str = "truncate"
    ):
        self.root = root
        self.manifest = manifest
        self.runner = runner
        self.tokenizer = encoder
        self.task: str = manifest["task"]["name"]
        self.backend: str = runner.backend
        self.precision: str = runner.precision
        self.input_names: tuple[str, ...] = tuple(i["name"] for i in manifest["signature"]["inputs"])
        self.outputs: list[dict[str, Any]] = manifest["signature"]["outputs"]
        self.output_names: tuple[str, ...] = tuple(o["name"] for o in self.outputs)
        self.max_length: int = encoder.max_length
        self.truncation: str = check_truncation(truncation)
        # load()'s golden check on a CPU class the int8 artifact was not verified on (None: none was needed)
        self.recheck: dict[str, Any] | None = None
        # one model run's cost beyond its tokens, in tokens (tune_batching); None: batches are batch_size sorted texts
        self.batch_overhead_tokens: float | None = None
        # early exit (runtimes.exits): the off-ramp layers, the calibrated rule and the layer count; None without
        record = manifest.get("exits")
        self.exits: dict[str, Any] | None = None
        if record is not None and hasattr(runner, "run_exits"):
            # the rule calibrated on this backend's own segments at export (--exit-calibration), else the folder's
            rule = getattr(runner, "rule", None) or record["rule"]
            self.exits = {"layers": list(record["layers"]), "rule": dict(rule), "total_layers": runner.total_layers}

    def __repr__(self) -> str:
        return f"Model({str(self.root)!r}, task={self.task!r}, backend={self.backend!r}, precision={self.precision!r})"

    def tune_batching(self) -> float:
        """Measure what one run costs beyond its tokens (about 15 runs: runtimes.batcher.measure_overhead) and from
        then on cut each call's length-sorted texts where that is cheapest, not every batch_size texts: a batch of
        short and long texts runs as two when the padding would cost more than one more run. Servers call it once
        (`bertship serve`, the Triton Python backend). Returns the overhead in tokens."""
        ids = self.tokenizer.tokenize(["the"])[0].ids
        self.batch_overhead_tokens = measure_overhead(self.runner.run, self.input_names, ids[len(ids) // 2],
                                                      self.max_length)
        return self.batch_overhead_tokens

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch of already-tokenized inputs: {input name: int array [batch, sequence]}."""
        return self.runner.run(self._checked(feeds))

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 32,
        truncation: str | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Tokenize and run texts (or text pairs) in input order; the task's output, or a dict when it has several.

        Texts are grouped by token length so each batch is padded only to its own longest member; outputs with a
        sequence axis come back padded with zeros to the longest text of the whole call.
        """
        encodings = self._tokenize(texts, pairs, truncation)
        longest = max(len(e.ids) for e in encodings)
        results: dict[str, np.ndarray] = {}
        for chunk, _, outs in self._batches(encodings, batch_size):
            for spec in self.outputs:
                name, value = spec["name"], outs[spec["name"]]
                has_sequence = len(spec["axes"]) > 1 and spec["axes"][1] == "sequence"
                if name not in results:
                    shape = list(value.shape)
                    shape[0] = len(encodings)
                    if has_sequence:
                        shape[1] = longest
                    results[name] = np.zeros(shape, dtype=value.dtype)
                if has_sequence:
                    results[name][chunk, : value.shape[1]] = value
                else:
                    results[name][chunk] = value
        return results[self.output_names[0]] if len(results) == 1 else results

    def count_truncated(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> int:
        """How many of these inputs are longer than max_length (and so are cut under truncation='truncate')."""
        return len(truncated(self.tokenizer.tokenize(texts, pairs)))

    def embed(
        self, texts: Sequence[str], normalize: bool | None = None, batch_size: int = 32, truncation: str | None = None,
        prompt_name: str | None = None, prompt: str | None = None, dimensions: int | None = None,
    ) -> np.ndarray:
        """One float32 vector per text, [len(texts), dim], in input order.

        feature-extraction artifacts are mean-pooled over each text's real tokens; sentence-embedding artifacts return
        their graph's pooled output. normalize=True L2-normalizes; None keeps what the artifact does. prompt_name
        prepends one of the model's prompts (sentence-transformers' config_sentence_transformers.json, e.g. "query"),
        prompt a text of your own; without either, the model's default prompt (if any). dimensions keeps the first N
        (Matryoshka; default: the folder's truncate_dim, else all), re-normalized when the vectors are unit length.
        """
        tasks.require_method(self.task, "embed")
        if normalize not in (None, True, False):
            raise UsageError(f"normalize must be True, False or None, got {normalize!r} — None keeps the artifact's")
        settings = self.manifest["task"]
        if normalize is False and settings.get("normalize"):
            raise UsageError("this artifact L2-normalizes inside its graph, so normalize=False cannot undo it — "
                             "re-export with --no-normalize, or pass normalize=None")
        texts = tasks.with_prompt(settings, texts, prompt_name, prompt)
        encodings = self._tokenize(texts, None, truncation)
        vectors: np.ndarray | None = None
        for chunk, feeds, outs in self._batches(encodings, batch_size):
            if self.task == "feature-extraction":
                value = tasks.mean_pool(outs["last_hidden_state"], feeds["attention_mask"])
            else:
                value = outs["sentence_embedding"]
            if vectors is None:
                vectors = np.zeros((len(encodings), value.shape[-1]), dtype=np.float32)
            vectors[chunk] = value
        vectors = tasks.l2_normalize(vectors) if normalize else vectors
        dims = dimensions if dimensions is not None else settings.get("dimensions")
        return tasks.truncate_dims(vectors, dims, bool(normalize or settings.get("normalize")))

    def rerank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, batch_size: int = 32,
        truncation: str | None = None,
    ) -> list[dict[str, Any]]:
        """The documents scored against the query by the cross-encoder, best first: [{index, score, document}], index
        being the document's position in `documents`; scores are the model's own (its activation applied, as
        sentence-transformers' CrossEncoder.predict). top_k keeps the best k."""
        tasks.require_method(self.task, "rerank")
        if not isinstance(query, str):
            raise UsageError(f"query must be a str, got {type(query).__name__} — rerank one query at a time")
        if top_k is not None:
            tasks.check_top_k(top_k)
        if isinstance(documents, str):
            raise UsageError("documents must be a list of str — wrap a single document in a list")
        documents = list(documents)
        scores = self.score([query] * len(documents), documents, batch_size, truncation)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [{"index": int(i), "score": float(scores[i]), "document": documents[i]} for i in order]

    def score(self, queries: Sequence[str], documents: Sequence[str], batch_size: int = 32,
              truncation: str | None = None) -> np.ndarray:
        """The cross-encoder's score of each (query, document) pair, float32 [len(queries)], in input order."""
        tasks.require_method(self.task, "rerank")
        encodings = self._tokenize(queries, documents, truncation)
        scores = np.zeros(len(encodings), dtype=np.float32)
        for chunk, _, outs in self._batches(encodings, batch_size):
            scores[chunk] = outs["scores"][:, 0]
        return scores

    def embed_sparse(
        self, texts: Sequence[str], top_k: int | None = None, batch_size: int = 32, truncation: str | None = None,
        prompt_name: str | None = None, prompt: str | None = None,
    ) -> list[tasks.SparseVector]:
        """Per text, its SPLADE vector over the vocabulary as SparseVector(indices, values): the non-zero weights
        (the top_k largest, when given), vocabulary ids ascending. The pooling runs inside the graph: one
        vocabulary-sized row per text leaves the runtime, never one per token."""
        tasks.require_method(self.task, "embed_sparse")
        if top_k is not None:
            tasks.check_top_k(top_k)
        encodings = self._tokenize(tasks.with_prompt(self.manifest["task"], texts, prompt_name, prompt), None,
                                   truncation)
        results: list[Any] = [None] * len(encodings)
        for chunk, _, outs in self._batches(encodings, batch_size):
            for i, vec in zip(chunk, tasks.sparse_rows(outs["sparse_embedding"], top_k)):
                results[i] = vec
        return results

    def embed_multi(
        self, texts: Sequence[str], batch_size: int = 32, truncation: str | None = None,
        prompt_name: str | None = None, prompt: str | None = None,
    ) -> list[np.ndarray]:
        """Per text, one float32 vector per token, [tokens, dim] (its real tokens, special tokens included, as
        ColBERT-style models score them); score with tasks.maxsim / tasks.maxsim_scores."""
        tasks.require_method(self.task, "embed_multi")
        encodings = self._tokenize(tasks.with_prompt(self.manifest["task"], texts, prompt_name, prompt), None,
                                   truncation)
        results: list[Any] = [None] * len(encodings)
        for chunk, feeds, outs in self._batches(encodings, batch_size):
            lengths = feeds["attention_mask"].sum(1)
            for row, i in enumerate(chunk):
                results[i] = np.array(outs["token_embeddings"][row, : lengths[row]], dtype=np.float32)
        return results

    def classify(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, top_k: int = 1, batch_size: int = 32,
        truncation: str | None = None, exits: bool = True, rule: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Per text (or text pair), {label, score} with softmax scores; with top_k > 1, a best-first list of them.

        An early-exit artifact adds "exit_layer" (per text, the layer whose off-ramp it left by; the layer count when it
        ran them all): each text leaves by the artifact's calibrated rule, or `rule` (runtimes.exits), and leaves the
        batch there. exits=False runs every layer (the fine-tuned model's own predictions)."""
        tasks.require_method(self.task, "classify")
        tasks.check_top_k(top_k)
        if self.exits is not None and exits:
            logits, layers = self.exit_logits(texts, pairs, batch_size, truncation, rule)
        else:
            if rule is not None:
                raise UsageError("rule= applies to an early-exit artifact with exits=True — drop it")
            encodings = self._tokenize(texts, pairs, truncation)
            logits, layers = None, None
            for chunk, _, outs in self._batches(encodings, batch_size):
                if logits is None:
                    logits = np.zeros((len(encodings), outs["logits"].shape[-1]), dtype=np.float32)
                logits[chunk] = outs["logits"]
            if self.exits is not None:
                layers = np.full(len(encodings), self.exits["total_layers"])
        labels = tasks.label_names(self.manifest["task"], logits.shape[-1])
        results: list[Any] = []
        for i, best in enumerate(tasks.top_labels(logits, labels, top_k)):
            if layers is not None:
                best = [{**b, "exit_layer": int(layers[i])} for b in best]
            results.append(best[0] if top_k == 1 else best)
        return results

    def exit_logits(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 32,
        truncation: str | None = None, rule: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """An early-exit artifact's (logits [N, labels], exit layer [N]) in input order: each text's logits at the
        off-ramp it left by under the rule (default: the calibrated one), the others' after the last layer."""
        from .exits import check_rule

        tasks.require_method(self.task, "classify")
        if self.exits is None:
            raise UsageError("this artifact has no off-ramps — train them with `bertship exits` and export that folder")
        rule = check_rule(self.exits["rule"] if rule is None else rule)
        encodings = self._tokenize(texts, pairs, truncation)
        logits: np.ndarray | None = None
        layers = np.zeros(len(encodings), dtype=np.int64)
        for chunk, feeds, _ in self._batches(encodings, batch_size, run=False):
            got, exit_layer = self.runner.run_exits(feeds, rule)
            if logits is None:
                logits = np.zeros((len(encodings), got.shape[-1]), dtype=np.float32)
            logits[chunk], layers[chunk] = got, exit_layer
        return logits, layers

    def answer(
        self, question: str | Sequence[str], context: str | Sequence[str], max_answer_tokens: int = 30,
        batch_size: int = 32, truncation: str | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """The best answer span in the context: {answer, score, start, end}, start/end being char offsets into it.

        Takes one question and context (returns one dict) or two equally long lists (returns a list).
        """
        tasks.require_method(self.task, "answer")
        if isinstance(max_answer_tokens, bool) or not isinstance(max_answer_tokens, int) or max_answer_tokens < 1:
            raise UsageError(f"max_answer_tokens must be a positive int, got {max_answer_tokens!r} — default: 30")
        single = isinstance(question, str)
        if single != isinstance(context, str):
            raise UsageError("got one of question/context as a str and the other not — pass one question with one "
                             "context, or a list of questions with a list of contexts")
        questions, contexts = ([question], [context]) if single else (question, context)
        both_lists = isinstance(questions, Sequence) and isinstance(contexts, Sequence)
        if both_lists and len(questions) != len(contexts):
            raise UsageError(f"got {len(questions)} questions but {len(contexts)} contexts — pass one context each")
        encodings = self._tokenize(questions, contexts, truncation)
        results: list[Any] = [None] * len(encodings)
        for chunk, _, outs in self._batches(encodings, batch_size):
            for row, i in enumerate(chunk):
                results[i] = tasks.best_span(outs["start_logits"][row], outs["end_logits"][row], encodings[i],
                                             contexts[i], max_answer_tokens)
        return results[0] if single else results

    def tag(
        self, texts: Sequence[str], batch_size: int = 32, truncation: str | None = None
    ) -> list[list[dict[str, Any]]]:
        """Per text, one {word, label, score, start, end} per word (read at its first sub-token), in text order."""
        tasks.require_method(self.task, "tag")
        encodings = self._tokenize(texts, None, truncation)
        results: list[Any] = [None] * len(encodings)
        for chunk, _, outs in self._batches(encodings, batch_size):
            labels = tasks.label_names(self.manifest["task"], outs["logits"].shape[-1])
            for row, i in enumerate(chunk):
                results[i] = tasks.word_tags(outs["logits"][row], encodings[i], texts[i], labels)
        return results

    def _tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None, truncation: str | None) -> list[Any]:
        return self.tokenizer.tokenize(texts, pairs, truncation=self.truncation if truncation is None else truncation)

    def _batches(self, encodings: list[Any], batch_size: int, run: bool = True) -> Iterator[Batch]:
        # Sorting by length pads each batch only to its own longest member; callers put results back by index.
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive int, got {batch_size!r} — the default is 32")
        lengths = [len(e.ids) for e in encodings]
        for chunk in plan_batches(lengths, batch_size, overhead_tokens=self.batch_overhead_tokens):
            feeds = self.tokenizer.pad([encodings[i] for i in chunk])
            yield chunk, feeds, self.runner.run(feeds) if run else {}

    def _checked(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise UsageError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise UsageError(
                f"feeds have wrong names (missing {missing}, unexpected {extra}) — this model takes {list(self.input_names)}"
            )
        out = {}
        shape = None
        for name in self.input_names:
            arr = np.asarray(feeds[name])
            if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
                raise UsageError(f"input {name!r} has shape {arr.shape} — pass a non-empty [batch, sequence] array")
            if not np.issubdtype(arr.dtype, np.integer):
                raise UsageError(f"input {name!r} has dtype {arr.dtype} — pass integer token ids / masks")
            if shape is not None and arr.shape != shape:
                raise UsageError(f"input {name!r} has shape {arr.shape} but {self.input_names[0]!r} has {shape}")
            shape = arr.shape
            out[name] = np.ascontiguousarray(arr, dtype=np.int64)
        if shape[1] > self.max_length:
            raise UsageError(
                f"sequence length {shape[1]} exceeds this model's max length {self.max_length} — truncate the inputs"
            )
        return out


def load(
    path: str | Path, backend: str | None = None, threads: int | None = None, truncation: str = "truncate",
    runner_options: dict[str, Any] | None = None, recheck: bool = True,
) -> Model:
    """Load an artifact: verify the checksums of the files this backend needs, then start the backend.

    An int8 artifact whose backend's int8 kernels here are of another CPU class than every class it was verified on
    (runtimes.cpuclass: x86 with VNNI, x86 without, ARM64 with or without the dot product) computes other numbers
    here. With `recheck` (the default) it is first run on its golden texts, in their batches, alone and among other
    batch-mates (about a second for a MiniLM-sized model), and a miss raises FidelityError naming the fix;
    `model.recheck` says what was run. recheck=False skips it (you ran `bertship verify` on this class yourself).

    `backend` defaults to the first backend recorded in the manifest that is installed here. `truncation` is what
    text methods do with inputs longer than the max length by default: "truncate" (cut them) or "error".
    `runner_options` are added to the manifest's backend options, e.g. ONNX Runtime `providers` and `io_binding`.
    """
    root = Path(path)
    manifest = artifact.read_manifest(root)
    built = list(manifest.get("backends", {}))
    if backend is None:
        installed = [b for b in built if b in backends.BACKENDS and backends.is_installed(b)]
        if not installed:
            backends.require(built[0] if built else "onnxruntime")  # raises, naming the extra to install
        backend = installed[0]
    backends.get_backend(backend)
    check_truncation(truncation)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive int or None, got {threads!r}")
    needed = artifact.backend_files(manifest, backend)
    artifact.check_files(root, manifest, only=needed)
    entry = manifest["backends"][backend]
    options = {**entry.get("options", {}), **(runner_options or {})}
    runner = backends.open_runner(root, entry, backend, threads, options)
    encoder = TextEncoder(root / artifact.TOKENIZER, manifest["tokenizer"])
    model = Model(root, manifest, runner, encoder, truncation)
    if recheck:
        model.recheck = _recheck(root, manifest, runner)
    return model


def _recheck(root: Path, manifest: dict[str, Any], runner: Runner) -> dict[str, Any] | None:
    """The golden check of an int8 artifact on a CPU class it was not verified on (None when none was needed)."""
    import time

    from . import cpuclass
    from .errors import FidelityError
    from .verify import backend_checks, read_golden

    if not cpuclass.computes_int8(manifest):
        return None
    here = cpuclass.runtime_class(runner.backend)
    target, verified = cpuclass.recorded(manifest, runner.backend)
    if here in verified:
        return None
    start = time.perf_counter()
    feeds, refs, texts, _ = read_golden(root, manifest)
    report, failures = backend_checks(runner, manifest, feeds, refs, texts)
    took = time.perf_counter() - start
    if failures:
        hint = "" if target == here else f" (it was built for {target})"
        raise FidelityError(failures, f"this int8 artifact was verified on {', '.join(verified) or 'no'} CPUs{hint}, "
                            f"and this {here} CPU computes it differently; run `bertship verify {root}` here for the "
                            f"full report, then re-export it with --target-cpu {here}, or use a float recipe")
    return {"cpu_class": here, "verified_on": verified, "target": target, "seconds": round(took, 3),
            "tail": report.get("tail", {}).get("cosine_min"), "outputs": report["outputs"]}
