"""The one table of tasks: which transformers head each uses, and the graph outputs it exports."""

from __future__ import annotations

from dataclasses import dataclass

from bertship.runtimes.errors import UsageError


@dataclass(frozen=True)
class Output:
    """One graph output: its axes (first is always batch) and how to read an argmax from it, if at all."""

    name: str
    axes: tuple[str, ...]
    argmax: str | None = None  # "labels": over the last axis; "sequence": over the tokens (QA span logits)

    def as_dict(self) -> dict:
        return {"name": self.name, "axes": list(self.axes), "argmax": self.argmax}


@dataclass(frozen=True)
class Task:
    """A task: the transformers Auto class for its head, its outputs, and what golden inputs it is checked on."""

    name: str
    head: str  # transformers Auto class
    outputs: tuple[Output, ...]
    architecture_suffix: str | None  # config.architectures ending with this imply the task
    uses_pooler: bool  # whether a checkpoint without pooler weights lacks part of this task
    text_pairs: bool  # checked on (text, text) pairs, as the task is used


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("feature-extraction", "AutoModel", (Output("last_hidden_state", ("batch", "sequence", "hidden")),),
             "Model", False, False),
        Task("sentence-embedding", "AutoModel", (Output("sentence_embedding", ("batch", "hidden")),),
             None, False, False),
        Task("sequence-classification", "AutoModelForSequenceClassification",
             (Output("logits", ("batch", "labels"), "labels"),), "ForSequenceClassification", True, False),
        Task("token-classification", "AutoModelForTokenClassification",
             (Output("logits", ("batch", "sequence", "labels"), "labels"),), "ForTokenClassification", False, False),
        Task("question-answering", "AutoModelForQuestionAnswering",
             (Output("start_logits", ("batch", "sequence"), "sequence"),
              Output("end_logits", ("batch", "sequence"), "sequence")),
             "ForQuestionAnswering", False, True),
        # Retrieval encoders, as sentence-transformers ships them (exporter.st_folder reads their folders):
        # a CrossEncoder's one logit through its activation, a SparseEncoder's SPLADE vector over the vocabulary, and
        # per-token vectors for late interaction (ColBERT), zero on padding.
        Task("rerank", "AutoModelForSequenceClassification", (Output("scores", ("batch", "labels")),),
             None, True, True),
        Task("sparse-embedding", "AutoModelForMaskedLM", (Output("sparse_embedding", ("batch", "vocab")),),
             None, False, False),
        Task("multi-vector", "AutoModel", (Output("token_embeddings", ("batch", "sequence", "hidden")),),
             None, False, False),
    )
}

# Tasks whose graph runs a sentence-transformers module after the transformer (pooling, Dense, activation, SPLADE).
ST_TASKS = ("sentence-embedding", "rerank", "sparse-embedding", "multi-vector")


def get_task(name: str) -> Task:
    """The task called `name`, or UsageError listing the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r} — choose from: {', '.join(TASKS)}") from None


def task_from_architectures(architectures: list[str] | None) -> Task | None:
    """The task a checkpoint's config.architectures implies (BertForSequenceClassification -> sequence-classification)."""
    for arch in architectures or []:
        for task in TASKS.values():
            if task.architecture_suffix and arch.endswith(task.architecture_suffix):
                return task
    return None
