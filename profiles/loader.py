"""Read a profile (a shipped name or a .toml path) with `tomllib` into frozen dataclasses, strictly.

Unknown keys, wrong types, unknown recipes, backends, providers, CPU flags and shapes are UsageError (exit 2) naming
the key path and the valid choices: a typo in a budget must not turn into a budget that is never checked.
"""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from bertship.runtimes.backends import BACKENDS
from bertship.runtimes.errors import UsageError
from bertship.runtimes.providers import PROVIDERS

from .machine import ISA_FLAGS
from .schema import BOUNDS, METRICS, BaselineRule, Budget, MachineSpec, Measure, Profile, Runtime, Workload

_KINDS = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "table": ("a table", lambda v: isinstance(v, dict)),
}
_SECTIONS = {"name": "str", "description": "str", "notes": "str[]", "machine": "table", "recipes": "table",
             "runtimes": "table[]", "workload": "table", "measure": "table", "baseline": "table", "budgets": "table[]"}
_MACHINE = {"arch": "str[]", "gpu": "bool", "min_cores": "int", "isa": "table"}
_RECIPES = {"candidates": "str[]", "reference": "str", "by_class": "table"}
_RUNTIME = {"backend": "str", "threads": "threads[]", "providers": "str[]", "require": "str[]",
            "provider_options": "table", "io_binding": "bool", "model_format": "str", "note": "str",
            "disabled_optimizers": "str[]"}
_WORKLOAD = {"shapes": "str[]", "batches": "int[]", "sequences": "int[]", "text": "str", "text_batch": "int",
             "text_limit": "int"}
_MEASURE = {"warmup": "int", "iterations": "int", "rounds": "int", "passes": "int", "foreign_load_max": "float",
            "retries": "int"}
_BASELINE = {"threshold": "float", "max_allowance": "float", "spread_factor": "float", "confirm_pause_s": "float"}
_BUDGET = {"metric": "str", "shape": "str", "backend": "str", "threads": "threads", "max": "float", "min": "float",
           "max_ratio": "float", "min_ratio": "float"}


def shipped() -> list[str]:
    """Names of the profiles that ship with bertship."""
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml"))


def profile_path(name_or_path: str | Path) -> Path:
    """The file of a shipped profile name, or the given .toml path; UsageError naming the choices otherwise."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"profile file {text!r} does not exist — pass a .toml file or one of: "
                             f"{', '.join(shipped())}")
        return path
    if text not in shipped():
        raise UsageError(f"unknown profile {text!r} — choose from: {', '.join(shipped())}, or pass a .toml file path")
    return Path(str(resources.files(__package__) / f"{text}.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by shipped name or file path."""
    path = profile_path(name_or_path)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"profile {path} is not valid TOML ({exc}) — fix the file") from None
    return _profile(data, path, hashlib.sha256(raw).hexdigest())


def candidate_recipes(profile: Profile | str | Path) -> tuple[str, ...]:
    """The recipes a profile asks `bertship export --profile` to try, in order (names from exporter/recipes.py)."""
    return (profile if isinstance(profile, Profile) else load_profile(profile)).recipes


class _Reader:
    """Type-checks one table against a key spec, naming the file and key path in every error."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, problem: str, fix: str) -> UsageError:
        return UsageError(f"profile {self.where}: {key} {problem} — {fix}")

    def table(self, path: str, data: Any, spec: dict[str, str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(path, "must be a table", f"write it as [{path}]")
        for key in data:
            if key not in spec:
                raise self.fail(f"{path + '.' if path else ''}{key}", "is not a known key",
                                f"valid keys{' in [' + path + ']' if path else ''}: {', '.join(spec)}")
        for key, value in data.items():
            self.check(f"{path + '.' if path else ''}{key}", value, spec[key])
        return data

    def check(self, key: str, value: Any, kind: str) -> None:
        if kind in ("threads", "threads[]"):
            items = value if kind.endswith("[]") and isinstance(value, list) else [value]
            ok = (not kind.endswith("[]") or isinstance(value, list)) and all(
                v == "cores" or (_KINDS["int"][1](v) and v >= 1) for v in items)
            if not ok or (kind.endswith("[]") and not value):
                raise self.fail(key, f"must be {'a non-empty array of ' if kind.endswith('[]') else ''}"
                                f"positive integers or \"cores\", got {value!r}", 'e.g. threads = [1, "cores"]')
            return
        base, many = kind.removesuffix("[]"), kind.endswith("[]")
        name, test = _KINDS[base]
        if many:
            if not isinstance(value, list) or not all(test(v) for v in value):
                raise self.fail(key, f"must be an array of {name.split(' ', 1)[-1]}s, got {value!r}",
                                "e.g. [\"a\", \"b\"]" if base == "str" else "e.g. [1, 8]")
        elif not test(value):
            raise self.fail(key, f"must be {name}, got {type(value).__name__} {value!r}", f"write {name}")

    def choice(self, key: str, value: Any, choices: Any) -> None:
        if value not in choices:
            raise self.fail(key, f"is {value!r}, which is not one of the choices",
                            f"choose from: {', '.join(map(str, choices))}")


def _profile(data: dict[str, Any], path: Path, sha256: str) -> Profile:
    from bertship.exporter.recipes import RECIPES  # torch-free; imported here to keep `profiles` import light

    r = _Reader(str(path) if path.parent != Path(str(resources.files(__package__))) else path.stem)
    r.table("", data, _SECTIONS)
    for key in ("name", "recipes", "runtimes"):
        if key not in data:
            raise r.fail(key, "is missing", f"every profile needs name, [recipes] and [[runtimes]] (see {shipped()[0]})")
    machine = _machine(r, data.get("machine", {}), RECIPES)
    recipes = r.table("recipes", data["recipes"], _RECIPES)
    if not recipes.get("candidates"):
        raise r.fail("recipes.candidates", "is missing or empty",
                     "list the recipes to try, e.g. [\"int8-static\", \"fp32\"]")
    for i, name in enumerate(recipes["candidates"]):
        r.choice(f"recipes.candidates[{i}]", name, RECIPES)
    if "reference" in recipes:
        r.choice("recipes.reference", recipes["reference"], RECIPES)
    from bertship.runtimes.cpuclass import TARGETS

    by_class = r.table("recipes.by_class", recipes.get("by_class", {}), {name: "str[]" for name in TARGETS})
    for cls, names in by_class.items():
        if not names:
            raise r.fail(f"recipes.by_class.{cls}", "is empty", "list the recipes to try on that CPU class")
        for i, name in enumerate(names):
            r.choice(f"recipes.by_class.{cls}[{i}]", name, RECIPES)
    if not data["runtimes"]:
        raise r.fail("runtimes", "is empty", "add at least one [[runtimes]] with a backend")
    runtimes = tuple(_runtime(r, f"runtimes[{i}]", t) for i, t in enumerate(data["runtimes"]))
    workload = _workload(r, data.get("workload", {}), path)
    measure = Measure(**r.table("measure", data.get("measure", {}), _MEASURE))
    for key in ("iterations", "rounds", "passes"):
        if getattr(measure, key) < 1:
            raise r.fail(f"measure.{key}", f"is {getattr(measure, key)}", "it must be at least 1")
    if measure.warmup < 0 or measure.retries < 0 or not 0 < measure.foreign_load_max <= 1:
        raise r.fail("measure", "has a negative warmup/retries or foreign_load_max outside (0, 1]", "fix the values")
    rule = BaselineRule(**{k: float(v) for k, v in r.table("baseline", data.get("baseline", {}), _BASELINE).items()})
    if rule.confirm_pause_s < 0 or rule.spread_factor < 0:
        raise r.fail("baseline", "has a negative confirm_pause_s or spread_factor", "use 0 or more")
    if not 0 < rule.threshold <= rule.max_allowance:
        raise r.fail("baseline.threshold", f"is {rule.threshold}", "it must be > 0 and <= baseline.max_allowance")
    budgets = tuple(_budget(r, f"budgets[{i}]", b, workload, runtimes) for i, b in enumerate(data.get("budgets", [])))
    return Profile(data["name"], data.get("description", ""), f"{path} (sha256 {sha256[:12]})", machine, runtimes,
                   tuple(recipes["candidates"]), recipes.get("reference"), workload, measure, rule, budgets,
                   tuple(data.get("notes", ())), tuple((k, tuple(v)) for k, v in by_class.items()))


def _machine(r: _Reader, data: Any, recipes: Any) -> MachineSpec:
    m = r.table("machine", data, _MACHINE)
    isa = r.table("machine.isa", m.get("isa", {}), {name: "str[]" for name in recipes})
    for recipe, flags in isa.items():
        for flag in flags:
            r.choice(f"machine.isa.{recipe}", flag, ISA_FLAGS)
    return MachineSpec(tuple(m.get("arch", ())), m.get("gpu", False), m.get("min_cores", 1),
                       tuple((k, tuple(v)) for k, v in isa.items()))


def _runtime(r: _Reader, key: str, data: Any) -> Runtime:
    t = r.table(key, data, _RUNTIME)
    if "backend" not in t:
        raise r.fail(f"{key}.backend", "is missing", f"choose from: {', '.join(BACKENDS)}")
    r.choice(f"{key}.backend", t["backend"], BACKENDS)
    ort_only = [k for k in ("providers", "require", "provider_options", "io_binding", "disabled_optimizers") if k in t]
    if t["backend"] != "onnxruntime" and ort_only:
        raise r.fail(f"{key}.{ort_only[0]}", f"applies to onnxruntime, not {t['backend']}", "remove it")
    for field in ("providers", "require"):
        for i, name in enumerate(t.get(field, [])):
            r.choice(f"{key}.{field}[{i}]", name, PROVIDERS)
    options = r.table(f"{key}.provider_options", t.get("provider_options", {}), {p: "table" for p in PROVIDERS})
    for provider, opts in options.items():
        for name, value in opts.items():
            if not isinstance(value, (str, int, float, bool)):
                raise r.fail(f"{key}.provider_options.{provider}.{name}", "must be a string, number or boolean",
                             "ONNX Runtime takes provider options as scalars")
    r.choice(f"{key}.model_format", t.get("model_format", "onnx"), ("onnx", "ort"))
    return Runtime(t["backend"], tuple(t.get("threads", ["cores"])), tuple(t.get("providers", ())),
                   tuple(t.get("require", ())), tuple((p, tuple(o.items())) for p, o in options.items()),
                   t.get("io_binding", False), t.get("model_format", "onnx"),
                   tuple(t["disabled_optimizers"]) if "disabled_optimizers" in t else None)


def parse_shape(text: str) -> tuple[int, int]:
    """'8x128' -> (8, 128); UsageError otherwise."""
    try:
        batch, seq = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"shape {text!r} is not BATCHxSEQUENCE — write e.g. 8x128") from None
    if batch < 1 or seq < 2:
        raise UsageError(f"shape {text!r} needs batch >= 1 and sequence >= 2 — write e.g. 1x128")
    return batch, seq


def _workload(r: _Reader, data: Any, path: Path) -> Workload:
    w = r.table("workload", data, _WORKLOAD)
    grid = "batches" in w or "sequences" in w
    if grid and "shapes" in w:
        raise r.fail("workload", "has both shapes and batches/sequences", "give one: shapes, or batches x sequences")
    if grid and not (w.get("batches") and w.get("sequences")):
        raise r.fail("workload", "needs both batches and sequences for a grid",
                     "e.g. batches = [1, 8], sequences = [128]")
    shapes = [f"{b}x{s}" for b in w["batches"] for s in w["sequences"]] if grid else w.get("shapes", ["1x128"])
    for i, shape in enumerate(shapes):
        try:
            parse_shape(shape)
        except UsageError as exc:
            raise r.fail(f"workload.shapes[{i}]", f"is {shape!r}", str(exc).split(" — ", 1)[1]) from None
    text = w.get("text")
    if text is not None and not Path(text).is_absolute():
        text = str(path.parent / text)  # relative to the profile file, so a profile and its texts travel together
    if not shapes and text is None:
        raise r.fail("workload", "has no shapes and no text", "give shapes (or batches x sequences), or a text file")
    if w.get("text_batch", 32) < 1 or w.get("text_limit", 512) < 1:
        raise r.fail("workload.text_batch", "and text_limit must be at least 1", "fix the value")
    return Workload(tuple(shapes), text, w.get("text_batch", 32), w.get("text_limit", 512))


def _budget(r: _Reader, key: str, data: Any, workload: Workload, runtimes: tuple[Runtime, ...]) -> Budget:
    b = r.table(key, data, _BUDGET)
    if "metric" not in b:
        raise r.fail(f"{key}.metric", "is missing", f"choose from: {', '.join(METRICS)}")
    r.choice(f"{key}.metric", b["metric"], METRICS)
    metric = METRICS[b["metric"]]
    bounds = [k for k in ("max", "min", "max_ratio", "min_ratio") if k in b]
    allowed = BOUNDS[metric.better]
    if len(bounds) != 1 or bounds[0] not in allowed:
        raise r.fail(key, f"has bound(s) {bounds or 'none'} for {metric.name} ({metric.better} is better)",
                     f"give exactly one of: {', '.join(allowed)}")
    if b[bounds[0]] <= 0:
        raise r.fail(f"{key}.{bounds[0]}", f"is {b[bounds[0]]}", "a limit must be positive")
    shapes = list(workload.shapes) + (["text"] if workload.text else [])
    if metric.per_shape and "shape" not in b:
        raise r.fail(f"{key}.shape", f"is missing ({metric.name} is per shape)", f"choose from: {', '.join(shapes)}")
    if not metric.per_shape and "shape" in b:
        raise r.fail(f"{key}.shape", f"does not apply to {metric.name}", "remove it")
    if "shape" in b:
        r.choice(f"{key}.shape", b["shape"], shapes)
    if "backend" in b:
        r.choice(f"{key}.backend", b["backend"], sorted({rt.backend for rt in runtimes}))
    if "threads" in b:
        r.choice(f"{key}.threads", b["threads"], [t for rt in runtimes for t in rt.threads])
    return Budget(metric.name, bounds[0], float(b[bounds[0]]), b.get("shape"), b.get("backend"), b.get("threads"))
