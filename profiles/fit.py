"""Does this machine fit a profile? Every expectation the machine misses is named, then one MachineError is raised.

A profile's latency budgets judge an artifact only on the machine they were written for: an int8 budget on a CPU
without VNNI, a gpu profile without a GPU, or an ARM profile on x86 would judge the machine instead. So the mismatch is
reported (exit 8) before anything is measured — never a silent pass or a misleading fail.
"""

from __future__ import annotations

from typing import Any, Iterable

from bertship.runtimes.errors import MachineError

from .schema import Profile


def _threads(setting: int | str, cores: int) -> int:
    return cores if setting == "cores" else int(setting)


def mismatches(profile: Profile, facts: dict[str, Any], recipes: Iterable[str] | None = None) -> list[str]:
    """What this machine (`facts` as machine_facts() gives them) lacks for the profile; empty when it fits.

    `recipes`: the recipes of the artifacts to be measured (default: every candidate of the profile) — their CPU-flag
    expectations are checked.
    """
    spec = profile.machine
    problems: list[str] = []
    arch = str(facts.get("arch", ""))
    if spec.arch and arch not in spec.arch:
        problems.append(f"the CPU architecture is {arch}, the profile is for {' or '.join(spec.arch)}")
    flags = set(facts.get("flags", []))
    for recipe in profile.recipes if recipes is None else recipes:
        need = spec.isa_for(recipe)
        if need and not flags & set(need):
            problems.append(f"recipe {recipe} expects one of the CPU flags {', '.join(need)}, which "
                            f"{facts.get('model', 'this CPU')} lacks")
    cores = int(facts.get("usable_cores") or facts.get("cores") or 1)
    if cores < spec.min_cores:
        problems.append(f"{cores} usable cores, the profile needs at least {spec.min_cores}")
    for rt in profile.runtimes:
        over = [t for t in rt.threads if _threads(t, cores) > cores]
        if over:
            problems.append(f"{rt.backend} threads {', '.join(map(str, over))} exceed the {cores} usable cores")
        have = list(facts.get("providers", []))
        for name in rt.require:
            if name not in have:
                problems.append(f"onnxruntime here has no {name} (it has: {', '.join(have) or 'nothing'})")
    if spec.gpu and not facts.get("gpus"):
        problems.append("no NVIDIA GPU here (nvidia-smi lists none)")
    return problems


def require_fit(profile: Profile, facts: dict[str, Any], recipes: Iterable[str] | None = None) -> None:
    """Raise MachineError naming every missing feature when this machine does not fit the profile."""
    problems = mismatches(profile, facts, recipes)
    if problems:
        raise MachineError(f"this machine does not fit profile {profile.name!r}: " + "; ".join(problems)
                           + " — run on a machine the profile describes, or pass a profile written for this one")
