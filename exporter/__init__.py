"""bertship's exporter (needs torch): load → export graph → build backends → verify → package.

    from bertship.exporter import export
    export("path/to/model", out="artifacts/model")           # a Hugging Face model folder
    export(model, tokenizer, task="sequence-classification", out="artifacts/pruned")   # a model in memory
"""

from .pipeline import DEFAULT_BACKENDS, export

__all__ = ["DEFAULT_BACKENDS", "export"]
