"""Typed errors shared by every part of bertship; the CLI maps each class to its exit code.

Every message is one line that names the problem and the fix. Torch-free, so an app embedding the runtime can catch
them without the exporter installed.
"""

from __future__ import annotations


class BertshipError(Exception):
    """Base class; `exit_code` is what the `bertship` command returns for it."""

    exit_code = 1


class UsageError(BertshipError):
    """Raised for a bad argument: unknown family, task, backend or option value, an --out that exists, a bad input."""

    exit_code = 2


class SourceError(BertshipError):
    """Raised when the model to export cannot be used: missing folder, no or corrupt weights, pickle-only weights,
    remote code, a task whose head the checkpoint does not carry."""

    exit_code = 3


class FidelityError(BertshipError):
    """Raised when a backend's outputs differ from the reference beyond the family's tolerance; lists every failure."""

    exit_code = 4

    def __init__(self, failures: list[str], fix: str = "the runtime here differs from where the artifact was made; "
                 "re-export it on this machine, or report these numbers"):
        self.failures = list(failures)
        super().__init__(f"{len(self.failures)} output check(s) failed: " + "; ".join(self.failures) + f" — {fix}")


class ArtifactError(BertshipError):
    """Raised when an artifact cannot be trusted or read: missing, changed or truncated file, unknown format version."""

    exit_code = 5


class BackendMissingError(BertshipError):
    """Raised when a backend (or the exporter) is asked for but its Python package is not installed."""

    exit_code = 6


class BudgetError(BertshipError):
    """Raised by `bertship check` when a measured budget (latency, throughput, memory, size, load time, fidelity) or
    the comparison with a baseline fails, after a suspected latency failure was re-measured and confirmed."""

    exit_code = 7


class MachineError(BertshipError):
    """Raised when this machine lacks what was asked for: a CPU feature (ISA flag), a GPU, an execution provider."""

    exit_code = 8


class InconclusiveError(BertshipError):
    """Raised by `bertship check` when a check failed only on timings taken while other processes loaded the CPU, or
    its baseline was timed under such load: the measurement cannot judge the artifact."""

    exit_code = 9


class FusionError(BertshipError):
    """Raised when ONNX Runtime's transformer fusions reach fewer fused ops than the family should (a silent slowdown
    otherwise); names the fused op and the layers where it is missing."""

    exit_code = 10


class DestinationError(BertshipError):
    """Raised when an output folder cannot be written: its parent is read-only or not a folder, or the disk refuses
    it. Raised before any work is done where it can be seen in advance."""

    exit_code = 11


class MemoryNeedError(BertshipError):
    """Raised before a stage whose estimated peak memory exceeds what this machine has available: names the estimate,
    what is available and the way out, instead of letting the kernel's OOM killer end the process without a word."""

    exit_code = 12


class ServeError(BertshipError):
    """Raised by `bertship deploy … --check` when the model server fails to start or to load the repository, or stops
    answering while it is checked, and by `bertship serve` when Ray Serve cannot start the application; names the
    server's log."""

    exit_code = 13


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with the traceback from --debug)",
    UsageError.exit_code: "bad usage: unknown option value, family, task or backend; --out exists without --force",
    SourceError.exit_code: "the source model cannot be used (missing, corrupt, pickle-only, remote code, head missing)",
    FidelityError.exit_code: "fidelity gate failed: a backend's outputs differ from the reference beyond tolerance",
    ArtifactError.exit_code: "artifact integrity: a file is missing or changed, or the format version is unknown",
    BackendMissingError.exit_code: "a backend or the exporter is not installed (the message names the extra)",
    BudgetError.exit_code: "a budget or the baseline comparison failed (bertship check; the table names each margin)",
    MachineError.exit_code: "this machine lacks what a recipe or profile needs (names the missing CPU flag or device)",
    InconclusiveError.exit_code: "inconclusive: a check failed, or its baseline was timed, under foreign CPU load",
    FusionError.exit_code: "graph optimization incomplete: an expected fused op is missing (names op and layers)",
    DestinationError.exit_code: "the output folder cannot be written (read-only place, a file in the way, disk full)",
    MemoryNeedError.exit_code: "not enough free memory for the export as estimated from the weights (names the need)",
    ServeError.exit_code: "deploy --check: the model server failed to start, to load the repository, or to answer; "
                          "serve: Ray Serve could not start the application",
}
