"""A profile as text for `bertship profiles show`: what it runs, expects, measures, bounds, and whether it fits here."""

from __future__ import annotations

from typing import Any

from .fit import mismatches
from .schema import METRICS, Profile


def describe(profile: Profile, facts: dict[str, Any] | None = None) -> str:
    """Readable summary of a profile; with `facts`, whether this machine fits it (every candidate recipe)."""
    m, w, s = profile.machine, profile.workload, profile.measure
    lines = [f"profile {profile.name}: {profile.description}", f"  file: {profile.source}", "",
             f"machine: arch {' or '.join(m.arch) or 'any'}, {'an NVIDIA GPU' if m.gpu else 'no GPU needed'}, "
             f"at least {m.min_cores} core(s)"]
    lines += [f"  {recipe} expects one of: {', '.join(flags)}" for recipe, flags in m.isa]
    lines += ["", f"recipes to try, in order: {', '.join(profile.recipes)}"
              + (f" (reference: {profile.reference_recipe})" if profile.reference_recipe else "")]
    lines += [f"  on {cls} CPUs: {', '.join(names)}" for cls, names in profile.recipes_by_class]
    lines += ["", "runtimes:"]
    for rt in profile.runtimes:
        extra = [f"providers {' > '.join(rt.providers)}" if rt.providers else "",
                 f"requires {', '.join(rt.require)}" if rt.require else "", "IO binding" if rt.io_binding else "",
                 f"{rt.model_format.upper()}-format model" if rt.model_format != "onnx" else "",
                 "" if rt.disabled_optimizers is None else
                 f"ONNX Runtime optimizers off: {', '.join(rt.disabled_optimizers) or 'none (ONNX Runtime defaults)'}"]
        lines.append(f"  {rt.backend}: threads {', '.join(map(str, rt.threads))}"
                     + "".join(f"; {e}" for e in extra if e))
        lines += [f"    {p} options: {', '.join(f'{k}={v}' for k, v in opts)}" for p, opts in rt.provider_options]
    lines += ["", f"workload: shapes {', '.join(w.shapes) or 'none'}"
              + (f"; texts from {w.text} in batches of {w.text_batch} (first {w.text_limit})" if w.text else ""),
              f"measure: {s.warmup} warmup calls, {s.rounds} shuffled rounds x {s.iterations} calls per process, "
              f"{s.passes} process(es) per job; blocks under > {s.foreign_load_max:.0%} foreign CPU load re-measured "
              f"up to {s.retries} time(s)",
              f"baseline: slowdown allowed +{profile.baseline.threshold:.0%} (up to "
              f"+{profile.baseline.max_allowance:.0%} for a noisy baseline)", "", "budgets:"]
    for b in profile.budgets:
        lines.append(f"  {b.label()}  [{METRICS[b.metric].unit}: {METRICS[b.metric].what}]")
    if not profile.budgets:
        lines.append("  none")
    lines += [f"note: {n}" for n in profile.notes]
    if facts is not None:
        from bertship.runtimes.cpuclass import class_of, describe as class_text, no_gain

        cls = class_of(str(facts.get("arch", "")), facts.get("flags", []))
        wanted = profile.recipes_for(cls)
        problems = mismatches(profile, facts, wanted)
        lines += ["", f"this machine ({facts.get('model')}, {facts.get('arch')}): "
                  + ("fits" if not problems else "does NOT fit: " + "; ".join(problems)),
                  f"  CPU class {class_text(cls)}"]
        if not problems:
            flags = set(facts.get("flags", []))
            from bertship.exporter.recipes import RECIPES

            for name in wanted:
                recipe = RECIPES[name]
                for rt in profile.runtimes:
                    if rt.backend not in recipe.how:
                        continue
                    why = no_gain(cls, name, rt.backend)
                    if recipe.isa_any and not flags & set(recipe.isa_any):
                        why = f"needs {' or '.join(recipe.isa_any)}"
                    lines.append(f"  {'skips' if why else 'tries'} {name} on {rt.backend}" + (f": {why}" if why else ""))
    return "\n".join(lines)
