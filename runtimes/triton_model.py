"""Triton Python-backend model that serves a bertship artifact with the bertship runtime: text in, task results out.

`bertship deploy triton ART --backend python` copies this file as `<name>/1/model.py` and the artifact's manifest,
tokenizer and one runtime's model files into `<name>/1/artifact/`. It runs inside Triton's Python backend and imports
only the bertship runtime, numpy and `triton_python_backend_utils`; bertship itself never imports it. Its settings
(runtime, threads, truncation, bucket size, pairs) come from the `parameters` of the model's config.pbtxt.

Triton's dynamic batcher hands `execute` several requests at once, in arrival order: their texts are run together,
sorted by token length and cut into batches of at most `bucket_size` where that costs least (Model.tune_batching
measures a run's fixed cost once at start: a short and a long text run apart when padding the short one would cost
more than one more run), and the results are put back per request. A request with bad text gets an error
response; the other requests of the batch are unaffected.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from bertship.runtimes import UsageError, load, tasks


class TritonPythonModel:
    """TEXT (and TEXT_PAIR) [batch, 1] bytes -> the task's outputs, one row per text (see OUTPUTS in deploy.py)."""

    def initialize(self, args):
        """Load the artifact copied beside this file with the settings from the model config."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "artifact")
        # default: the backend's (every core) in each instance; the threads sleep while their instance is idle
        threads = int(params["threads"]) if params.get("threads") else None
        # The stub shares the CPUs with the server's threads (gRPC/HTTP, the batcher, the other instances' stubs):
        # ONNX Runtime's intra-op threads sleep between runs instead of spinning on cores those need (OpenVINO's
        # runner has no use for the option and leaves it alone).
        self.model = load(folder, backend=params["runtime"], threads=threads, truncation=params["truncation"],
                          runner_options={"allow_spinning": False})
        self.bucket = int(params["bucket_size"])
        # the texts of the requests Triton hands over together are cut into length-sorted batches where cheapest
        if params.get("tune_batching", "true") == "true":
            self.model.tune_batching()
        self.pairs = params.get("text_pairs", "false") == "true"
        self.run = {"sentence-embedding": self._embed, "feature-extraction": self._embed,
                    "sequence-classification": self._classify, "question-answering": self._answer,
                    "token-classification": self._tag, "rerank": self._score, "sparse-embedding": self._sparse,
                    "multi-vector": self._multi}[self.model.task]

    def execute(self, requests):
        """One response per request, in order; every valid request's texts run together in length buckets."""
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                good.append((i, *self._texts(request)))
            except UsageError as exc:
                responses[i] = _error(exc)
        if good:
            try:
                self._respond(good, responses)
            except UsageError:
                # One request's texts broke the joint run (e.g. too long under truncation="error"): run each request
                # alone so only that one gets the error.
                for item in good:
                    try:
                        self._respond([item], responses)
                    except UsageError as exc:
                        responses[item[0]] = _error(exc)
        return responses

    def _respond(self, items, responses):
        texts = [t for _, ts, _ in items for t in ts]
        pairs = [p for _, _, ps in items for p in ps] if self.pairs else None
        columns = self.run(texts, pairs)
        start = 0
        for index, ts, _ in items:
            rows = slice(start, start + len(ts))
            start += len(ts)
            tensors = [pb_utils.Tensor(name, value[rows]) for name, value in columns.items()]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def _texts(self, request):
        texts = _strings(pb_utils.get_input_tensor_by_name(request, "TEXT"), "TEXT")
        pairs = _strings(pb_utils.get_input_tensor_by_name(request, "TEXT_PAIR"), "TEXT_PAIR") if self.pairs else []
        if self.pairs and len(pairs) != len(texts):
            raise UsageError(f"got {len(texts)} TEXT but {len(pairs)} TEXT_PAIR — send one pair per text")
        return texts, pairs

    def _embed(self, texts, pairs):
        return {"EMBEDDING": self.model.embed(texts, batch_size=self.bucket).astype(np.float32)}

    def _classify(self, texts, pairs):
        if self.model.exits is not None:  # early exit: texts leave at their off-ramps, each batch shrinks as they do
            logits, _ = self.model.exit_logits(texts, pairs, batch_size=self.bucket)
        else:
            logits = np.asarray(self.model.encode(texts, pairs, batch_size=self.bucket), dtype=np.float32)
        labels = tasks.label_names(self.model.manifest["task"], logits.shape[-1])
        best = [row[0] for row in tasks.top_labels(logits, labels, 1)]
        return {"LOGITS": logits, "LABEL": _bytes([b["label"] for b in best]),
                "SCORE": np.array([[b["score"]] for b in best], dtype=np.float32)}

    def _answer(self, texts, pairs):
        spans = self.model.answer(texts, pairs, batch_size=self.bucket)
        return {"ANSWER": _bytes([s["answer"] for s in spans]),
                "SCORE": np.array([[s["score"]] for s in spans], dtype=np.float32),
                "START": np.array([[s["start"]] for s in spans], dtype=np.int64),
                "END": np.array([[s["end"]] for s in spans], dtype=np.int64)}

    def _tag(self, texts, pairs):
        return {"TAGS": _bytes([json.dumps(t, ensure_ascii=False) for t in self.model.tag(texts, batch_size=self.bucket)])}


    def _score(self, texts, pairs):
        return {"SCORE": self.model.score(texts, pairs, batch_size=self.bucket)[:, None]}

    def _sparse(self, texts, pairs):
        vectors = self.model.embed_sparse(texts, batch_size=self.bucket)
        return {"SPARSE": _bytes([json.dumps({"indices": v.indices.tolist(), "values": v.values.tolist()})
                                  for v in vectors])}

    def _multi(self, texts, pairs):
        mats = self.model.embed_multi(texts, batch_size=self.bucket)
        out = np.zeros((len(mats), max(len(m) for m in mats), mats[0].shape[1]), dtype=np.float32)
        for i, m in enumerate(mats):
            out[i, : len(m)] = m
        return {"TOKEN_EMBEDDINGS": out, "TOKENS": np.array([[len(m)] for m in mats], dtype=np.int64)}


def _bytes(strings):
    """[n, 1] object array of UTF-8 bytes: Triton's BYTES tensor."""
    return np.array([[s.encode("utf-8")] for s in strings], dtype=np.object_)


def _error(exc):
    # the runtime's advice names its keyword; what a client of this server can change is the deployment
    text = str(exc).replace("pass truncation='truncate'",
                            "deploy with `bertship deploy triton --backend python --truncation truncate`")
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(text))


def _strings(tensor, name):
    """A [batch, 1] BYTES tensor as a list of str; UsageError on a missing or empty input or bytes that are not UTF-8
    (the decoding is the tokenizer model's, which ships beside this one)."""
    from bertship.runtimes.triton_tokenizer import _strings as decode

    if tensor is None:
        raise UsageError(f"the request has no {name} input — send {name} as BYTES [batch, 1]")
    try:
        return decode(tensor.as_numpy(), name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None