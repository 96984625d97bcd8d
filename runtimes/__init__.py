"""bertship's torch-free runtime: load a verified artifact and run it on ONNX Runtime or OpenVINO.

    from bertship.runtimes import load
    model = load("artifacts/minilm")            # checksums checked, backend from the manifest
    vectors = model.encode(["hello world"])      # the task's output, computed with the bundled tokenizer

Nothing here imports torch or transformers; a test holds that true.
"""

from .errors import (
    ArtifactError,
    BackendMissingError,
    BertshipError,
    FidelityError,
    FusionError,
    MachineError,
    ServeError,
    SourceError,
    UsageError,
)
from .model import Model, load
from .tasks import SparseVector, maxsim, maxsim_scores
from .verify import verify

__all__ = [
    "ArtifactError",
    "BackendMissingError",
    "BertshipError",
    "FidelityError",
    "FusionError",
    "MachineError",
    "Model",
    "ServeError",
    "SourceError",
    "SparseVector",
    "UsageError",
    "load",
    "maxsim",
    "maxsim_scores",
    "verify",
]
