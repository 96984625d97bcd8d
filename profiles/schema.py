"""What a device profile holds, as inert frozen dataclasses, and the table of metrics a budget may bound.

The TOML files in this folder are read into these by loader.py; nothing here does I/O. `as_dict` gives the plain
data back, so a profile can be written beside the numbers it produced and diffed between runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """A quantity a budget can bound: which way is better, whether it is per shape, whether timing noise moves it."""

    name: str
    unit: str
    better: str  # "lower" or "higher"
    per_shape: bool
    noisy: bool
    what: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        *(Metric(f"p{q}_ms", "ms", "lower", True, True, f"{q}th percentile latency of one call")
          for q in (50, 90, 95, 99)),
        Metric("mean_ms", "ms", "lower", True, True, "mean latency of one call"),
        Metric("throughput", "items/s", "higher", True, True,
               "sequences per second at the p50 (text workload: texts per second over a whole pass)"),
        Metric("peak_rss_mb", "MB", "lower", False, False, "peak resident memory of the process that ran the model"),
        Metric("artifact_mb", "MB", "lower", False, False, "bytes of the backend's model files plus the tokenizer"),
        Metric("load_s", "s", "lower", False, True,
               "cold load in a fresh process: checksums, tokenizer and session creation (median over passes)"),
        Metric("cosine_min", "cosine", "higher", False, False,
               "lowest per-sample cosine of the outputs vs the artifact's golden PyTorch outputs, run on this machine"),
        Metric("rank_agreement", "share", "higher", False, False,
               "rerank, sparse-embedding, multi-vector: share of the golden queries whose best document stays first "
               "vs the golden PyTorch outputs, run on this machine (runtimes.retrieval)"),
        Metric("mean_exit_layer", "layers", "lower", False, False,
               "early-exit artifacts: mean number of layers a text of the text workload runs before it leaves "
               "(runtimes.exits)"),
    )
}
BOUNDS = {"lower": ("max", "max_ratio"), "higher": ("min", "min_ratio")}


@dataclass(frozen=True)
class Budget:
    """One validated limit: a bound (absolute, or a ratio of the reference artifact's value in the same run) on one
    metric, for one shape (per-shape metrics), optionally only one backend or thread setting."""

    metric: str
    bound: str  # "max", "min", "max_ratio" or "min_ratio"
    value: float
    shape: str | None = None
    backend: str | None = None
    threads: int | str | None = None

    @property
    def relative(self) -> bool:
        """True when the limit is a multiple of the reference artifact's value."""
        return self.bound.endswith("_ratio")

    def label(self) -> str:
        """Short text such as 'p95_ms 1x128 <= 12' or 'p50_ms 1x128 <= 0.45 x reference'."""
        op = "<=" if self.bound.startswith("max") else ">="
        limit = f"{self.value:g} x reference" if self.relative else f"{self.value:g}"
        scope = "".join(f" {s}" for s in (self.shape, self.backend) if s) + (
            f" t{self.threads}" if self.threads is not None else "")
        return f"{self.metric}{scope} {op} {limit}"


@dataclass(frozen=True)
class Runtime:
    """One backend to run, with its execution providers (ONNX Runtime) and the thread settings to sweep."""

    backend: str
    threads: tuple[int | str, ...] = ("cores",)  # "cores": this machine's usable cores
    providers: tuple[str, ...] = ()
    require: tuple[str, ...] = ()  # providers the machine must have (the others are skipped with a note)
    provider_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    io_binding: bool = False
    model_format: str = "onnx"  # "ort": the profile expects ONNX Runtime's ORT-format model (.ort)
    # ONNX Runtime graph transformers to turn off; None: bertship's default (runtimes.ort_runner.CPU_DISABLED_OPTIMIZERS
    # on CPU-only sessions), () restores every ONNX Runtime fusion
    disabled_optimizers: tuple[str, ...] | None = None

    def options_for(self) -> dict[str, dict[str, Any]]:
        """{provider: {option: value}} as ONNX Runtime takes them."""
        return {name: dict(opts) for name, opts in self.provider_options}


@dataclass(frozen=True)
class MachineSpec:
    """What the profile expects of the machine; checked by fit.py before anything is measured."""

    arch: tuple[str, ...] = ()
    gpu: bool = False
    min_cores: int = 1
    isa: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (recipe, CPU flags of which one must be present)

    def isa_for(self, recipe: str) -> tuple[str, ...]:
        """The flags one of which `recipe` needs here (empty: no requirement)."""
        return dict(self.isa).get(recipe, ())


@dataclass(frozen=True)
class Workload:
    """What is fed: a batch x sequence grid of real token ids, or real texts at their own lengths."""

    shapes: tuple[str, ...] = ("1x128",)
    text: str | None = None  # a file, one text a line
    text_batch: int = 32
    text_limit: int = 512


@dataclass(frozen=True)
class Measure:
    """How timing is done: warmup calls, timed calls per round, shuffled rounds per process, processes per job."""

    warmup: int = 5
    iterations: int = 20
    rounds: int = 4
    passes: int = 2
    foreign_load_max: float = 0.15  # a timed block is re-measured when other processes used more of the CPU than this
    retries: int = 2


@dataclass(frozen=True)
class BaselineRule:
    """How `check --baseline` judges a slowdown: the floor statistic may grow by `threshold`, widened by the
    baseline's own round-to-round spread up to `max_allowance`."""

    threshold: float = 0.10
    max_allowance: float = 0.15
    spread_factor: float = 2.0
    confirm_pause_s: float = 5.0


@dataclass(frozen=True)
class Profile:
    """A device profile: machine expectations, runtimes, candidate recipes, workload, measurement and budgets."""

    name: str
    description: str
    source: str
    machine: MachineSpec
    runtimes: tuple[Runtime, ...]
    recipes: tuple[str, ...]
    reference_recipe: str | None
    workload: Workload
    measure: Measure
    baseline: BaselineRule
    budgets: tuple[Budget, ...]
    notes: tuple[str, ...] = ()
    # per CPU class (runtimes.cpuclass), the candidate order there; classes not named use `recipes`
    recipes_by_class: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def recipes_for(self, cpu_class: str | None) -> tuple[str, ...]:
        """The candidate recipes, in order, on a machine of this CPU class."""
        return dict(self.recipes_by_class).get(cpu_class, self.recipes) if cpu_class else self.recipes

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON results)."""
        return asdict(self)
