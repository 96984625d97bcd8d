"""bertship's exporter (needs torch): load → export graph → build backends → verify → package.

    from bertship.exporter import export
    export("path/to/model", out="artifacts/model")           # a Hugging Face model folder
    export(model, tokenizer, task="sequence-classification", out="artifacts/pruned")   # a model in memory
"""

from .options import ExportOptions
from .pipeline import export

__all__ = ["ExportOptions", "export"]
