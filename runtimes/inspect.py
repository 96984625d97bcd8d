"""What is inside an artifact, for people: the text of report.md and of `bertship inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import cpuclass
from .retrieval import limit_flag


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def describe(manifest: dict[str, Any], root: Path | None = None) -> str:
    """Markdown summary: source, task, recipe, signature, files and sizes, fidelity per backend, environment."""
    src, task = manifest["source"], manifest["task"]
    cfg = src.get("config", {})
    lines = [
        f"# bertship artifact: {src.get('family')} / {task['name']}",
        "",
        f"- source: `{src.get('path')}` ({src.get('model_type')}, weights {src.get('format')}, "
        f"sha256 {str(src.get('weights_sha256'))[:16]}…)",
        f"- shape: {cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
        f"{cfg.get('num_attention_heads')} heads, FFN {cfg.get('intermediate_size')}",
        f"- task: {task['name']}" + "".join(f", {k}={v}" for k, v in task.items() if k not in ("name", "id2label")),
        f"- recipe: {manifest['recipe']['name']}" + "".join(
            f", {k}={v}" for k, v in manifest["recipe"].get("params", {}).items())
        + (f" (calibration: {manifest['recipe']['calibration']})" if manifest["recipe"].get("calibration") else ""),
        f"- max length: {manifest['tokenizer']['max_length']} tokens",
        f"- format {manifest['format_version']}, bertship {manifest['bertship_version']}, created {manifest['created']}",
        "",
        "## Signature",
        "",
        "| | name | dtype | axes |",
        "|---|---|---|---|",
    ]
    for kind in ("inputs", "outputs"):
        for io in manifest["signature"][kind]:
            lines.append(f"| {kind[:-1]} | {io['name']} | {io['dtype']} | {' × '.join(io['axes'])} |")
    lines += ["", "## Backends", ""]
    for backend, entry in manifest.get("backends", {}).items():
        opts = ", ".join(f"{k}={v}" for k, v in entry.get("options", {}).items())
        build = ", ".join(f"{k}={v}" for k, v in entry.get("build", {}).items())
        lines.append(f"- {backend}: `{entry['model']}` ({opts})" + (f"; built with {build}" if build else ""))
    exits = manifest.get("exits")
    if exits:
        from .exits import describe as rule_text

        lines += ["", "## Early exit", "", f"- off-ramps after layers {', '.join(map(str, exits['layers']))}; rule "
                  f"{rule_text(exits['rule'])}; each backend runs {len(exits['layers']) + 1} segments, texts that "
                  "exit leave the batch"]
        if manifest.get("tokens"):
            lines.append("- with token elimination: the off-ramps were trained and calibrated on the kept tokens, each "
                         "segment hands the next its kept tokens and their mask; \"full\" below is the model with "
                         "its token schedule")
        cal = exits.get("calibration") or {}
        for kind, m in cal.get("measured", {}).items():
            lines.append(f"- calibrated ({kind}, on {cal.get('texts')} texts of {cal.get('data')}): "
                         f"{rule_text(m['rule'])} runs {m['mean_layers']:.2f} of {cal.get('layers')} layers, "
                         f"accuracy {m['accuracy']:.4f} vs {cal.get('full_accuracy', 0):.4f} full"
                         + ("" if m.get("within", True) else " (outside the limit: not chosen)"))
        gate = exits.get("gate")
        if gate:
            lines += ["", f"Exit gate on {gate['data']} (limit {gate['max_accuracy_drop'] * 100:g} % accuracy drop):",
                      "", "| backend | texts | accuracy | full model | drop | agreement | mean layers | exits per layer |",
                      "|---|---|---|---|---|---|---|---|"]
            for backend, r in gate["backends"].items():
                hist = ", ".join(f"{k}: {v}" for k, v in r["exit_histogram"].items())
                lines.append(f"| {backend} | {r['texts']} | {r['accuracy']:.4f} | {r['full_model_accuracy']:.4f} | "
                             f"{r['accuracy_drop'] * 100:.2f} % | {r['agreement']:.4f} | {r['mean_layers']:.2f} | "
                             f"{hist} |")
    tokens = manifest.get("tokens")
    if tokens:
        kept = "; ".join(f"{n} tokens → {' → '.join(map(str, k))}" for n, k in (tokens.get("kept_at") or {}).items())
        res = tokens.get("result") or {}
        judged = tokens.get("judged_on") or {}
        score = (f"accuracy {res['accuracy']:.4f} (full {judged.get('full_model', {}).get('accuracy', 0):.4f})"
                 if "accuracy" in res else f"cosine min {res.get('cosine_min', 0):.4f}")
        lines += ["", "## Token elimination", "",
                  f"- tokens kept after layers 1-{len(tokens['schedule'])}: {', '.join(f'{x:g}' for x in tokens['schedule'])} "
                  f"of each text's; {res.get('cost', 0):.2f} of the full model's layer work",
                  f"- per layer: {kept}",
                  f"- judged on {judged.get('texts')} texts of {judged.get('data')}: {score}"
                  + (f"; recovered with {tokens['recovery']['steps']} distillation steps" if tokens.get("recovery")
                     else "")]
    fusions = manifest.get("graph", {}).get("fusions")
    if fusions:
        counts = ", ".join(f"{k} {v}" for k, v in fusions["counts"].items()) or "none"
        expected = ", ".join(f"{k} {v}" for k, v in fusions["expected"].items()) or "none"
        lines += ["", "## ONNX Runtime transformer fusions", "", f"- fused: {counts}", f"- expected for the family: {expected}"]
        for op, text in fusions["missing"].items():
            lines.append(f"- MISSING {op}: {text} (accepted with --allow-missing-fusions)")
        if fusions.get("note"):
            lines.append(f"- note: {fusions['note']}")
    for backend, fb in manifest.get("fallback", {}).items():
        kept = ", ".join(k["group"] for k in fb["kept_float"]) or "none"
        lines += ["", f"## Groups kept in float ({backend})", ""]
        for o in fb.get("objectives") or [{"metric": fb["metric"], "fp32": fb["fp32"], "target": fb["target"],
                                           "max_drop": fb["max_drop"]}]:
            final = fb.get("final_scores", {}).get(o["metric"], fb["final"])
            full = fb.get("all_quantized_scores", {}).get(o["metric"], fb["all_quantized"])
            limit = limit_flag(o["metric"], o.get("max_drop"))
            lines.append(f"- {o['metric']}: fp32 {o['fp32']:.4f}, everything quantized {full:.4f}, limit "
                         f"{o['target']:.4f} ({limit}), final {final:.4f}")
        if fb.get("route"):
            lines.append(f"- quantization route kept: {fb['route']} (of {len(fb.get('routes', []))} measured)")
        lines.append(f"- kept in float (most sensitive first): {kept}" +
                     (f" — {len(fb['kept_float'])} of {fb['groups']} groups" if fb.get("groups") else "")
                     + (" (every group: no MatMul runs in int8)" if fb.get("int8_in_name_only") else ""))
    choice = manifest.get("auto")
    if choice:
        lines += ["", "## recipe auto: candidates", "", f"Winner: {choice['winner']['recipe']} on "
                  f"{choice['winner']['backend']} — {choice['why']}.", "",
                  "| recipe | backend | score | p50 ms | size MB | verdict |", "|---|---|---|---|---|---|"]
        for c in choice["candidates"]:
            if "score" in c:
                verdict = "within limit" if c["within_limit"] else "over the limit"
                p50 = "not timed" if c["p50_ms"] is None else f"{c['p50_ms']:.2f}"
                lines.append(f"| {c['recipe']} | {c['backend']} | {c['metric']} {c['score']:.4f} | {p50} "
                             f"| {c['size_bytes'] / 1e6:.1f} | {verdict} |")
            else:
                lines.append(f"| {c['recipe']} | {c['backend']} | — | — | — | {c['status']}: {c['reason'][:80]} |")
    lines += ["", "## Files", "", "| file | size | sha256 |", "|---|---|---|"]
    for f in manifest.get("files", []):
        lines.append(f"| {f['path']} | {_mb(f['bytes'])} | {f['sha256'][:12]}… |")
    tol = manifest["fidelity"]["tolerance"]
    lines += [
        "",
        "## Fidelity vs PyTorch fp32 on the golden sentences",
        "",
        "Limits: " + (f"max|diff| ≤ {tol['max_abs_diff']:g}, " if tol.get("max_abs_diff") is not None else "")
        + f"per-sample cosine ≥ {tol['min_cosine']}, argmax agreement ≥ {tol['min_argmax_agreement']:g} "
        f"(where the reference's top-2 margin > {tol.get('argmax_margin', 1e-3):g}).",
        "",
        "| backend | precision | output | max abs diff | cosine min | cosine mean | argmax agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, rep in manifest["fidelity"].get("backends", {}).items():
        for o in rep["outputs"]:
            agree = "—" if o["argmax_agreement"] is None else f"{o['argmax_agreement']:.4f} ({o['decisive']})"
            lines.append(
                f"| {backend} | {rep['precision']} | {o['output']} | {o['max_abs_diff']:.2e} | "
                f"{o['cosine_min']:.7f} | {o['cosine_mean']:.7f} | {agree} |"
            )
    reps = {b: r for b, r in manifest["fidelity"].get("backends", {}).items() if "tail" in r}
    if reps:
        batch = tol.get("min_batch_cosine")
        lines += ["", "## Each golden text's vector: alone, in its batch, among other batch-mates", "",
                  "Per-text cosine vs the reference (the lowest of the three arrangements)"
                  + (f", limit {tol['min_text_cosine']}" if tol.get("min_text_cosine") is not None else "")
                  + "; alone vs batched cosine (batch invariance), "
                  + (f"limit {batch}." if batch is not None else "not judged"
                     + (" (--allow-batch-dependence)." if manifest["fidelity"].get("allow_batch_dependence") else ".")),
                  "", "| backend | texts | cosine min | cosine p1 | cosine mean | alone vs batched min | worst texts | "
                  "length sweep min (worst length) |", "|---|---|---|---|---|---|---|---|"]
        for backend, rep in reps.items():
            t, inv, sweep = rep["tail"], rep["batch_invariance"], rep.get("length_sweep")
            worst = "; ".join(f"{w['text'][:40]!r} {w['cosine']:.4f}" for w in t["worst"][:3])
            swept = (f"{sweep['cosine_min']:.6f} ({sweep['worst_length']} of 3–{sweep['longest']} tokens)" if sweep
                     else "—")
            lines.append(f"| {backend} | {t['texts']} | {t['cosine_min']:.6f} | {t['cosine_p1']:.6f} | "
                         f"{t['cosine_mean']:.6f} | {inv['cosine_min']:.6f} | {worst} | {swept} |")
    ranked = {b: r for b, r in manifest["fidelity"].get("backends", {}).items() if "ranking" in r}
    if ranked:
        limit = tol.get("min_rank_agreement")
        lines += ["", "## What retrieval measures (runtimes.retrieval), against the reference", "",
                  "Each golden query's documents in order: top-1 agreement on queries whose best document leads by "
                  "5 % of their score range, Kendall's tau; " + (f"limit {limit}." if limit is not None else "not judged."),
                  "", "| backend | queries (decisive) | top-1 agreement | Kendall tau min / mean | sparse top-10 terms "
                  "kept, min / mean | token cosine min / p1 |", "|---|---|---|---|---|---|"]
        for backend, rep in ranked.items():
            r, terms, tokens = rep["ranking"], rep.get("top_terms"), rep.get("token_cosine")
            agree = "—" if r["top1_agreement"] is None else f"{r['top1_agreement']:.4f}"
            lines.append(f"| {backend} | {r['queries']} ({r['decisive']}) | {agree} | {r['kendall_tau_min']:.3f} / "
                         f"{r['kendall_tau_mean']:.3f} | "
                         + (f"{terms['overlap_min']:.2f} / {terms['overlap_mean']:.3f}" if terms else "—") + " | "
                         + (f"{tokens['cosine_min']:.6f} / {tokens['cosine_p1']:.6f}" if tokens else "—") + " |")
    target = manifest["fidelity"].get("target")
    if target:
        lines += ["", f"## --min-cosine {target['min_cosine']} on {target['texts']} texts "
                  f"({target['judged_on']})", "", "| backend | cosine min | cosine p1 | cosine mean | alone vs batched min |",
                  "|---|---|---|---|---|"]
        for backend, m in target["backends"].items():
            lines.append(f"| {backend} | {m['cosine_min']:.6f} | {m['cosine_p1']:.6f} | {m['cosine_mean']:.6f} | "
                         f"{m['batch_cosine_min']:.6f} |")
    lines += ["", "## CPU class (int8 arithmetic)", "", "| backend | built for | verified on |", "|---|---|---|"]
    for backend in manifest.get("backends", {}):
        entry = manifest["backends"][backend].get("cpu_class")
        target, verified = cpuclass.recorded(manifest, backend)
        how = ([f"{v['class']} ({v['how']})" for v in entry.get("verified_on", [])] if entry else
               [f"{c} (from the build CPU's flags)" for c in verified])
        lines.append(f"| {backend} | {target} | {'; '.join(how) or '—'} |")
    if cpuclass.computes_int8(manifest):
        lines += ["", "On a CPU of a class not listed under verified on, `load()` first re-checks the golden texts "
                  "(`recheck=False` skips it)."]
    timings = manifest.get("timings_s")
    if timings:
        lines += ["", "## Export stages (seconds)", "", " · ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    env = manifest.get("environment", {})
    cpu = env.get("cpu", {})
    pkgs = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    lines += [
        "",
        "## Environment",
        "",
        f"- CPU: {cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores')} cores; {' '.join(cpu.get('flags', []))})",
        f"- Python {env.get('python')} on {env.get('os')}",
        f"- {pkgs}",
        "",
    ]
    return "\n".join(lines)
