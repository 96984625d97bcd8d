"""Bench results and check verdicts for people and for CI: a terminal table, Markdown, and JUnit XML.

Numbers stay raw floats in the results; they are formatted only here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .budgets import Verdict

_COLUMNS = ("job", "precision", "shape", "p50", "p90", "p95", "p99", "mean", "std", "items/s", "floor", "spread",
            "loaded")


def _rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for job_id, r in results["jobs"].items():
        for shape, s in r["shapes"].items():
            x = s["summary"]
            rows.append([job_id, r["env"]["precision"], shape, *(f"{x[k]:.3f}" for k in ("p50", "p90", "p95", "p99",
                         "mean", "std")), f"{x['throughput']:.1f}", f"{x['floor_ms']:.3f}", f"{x['spread']:.1%}",
                         f"{x['loaded_rounds']}/{x['rounds']}"])
    return rows


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"{m.get('model')} ({m.get('arch')}, {m.get('usable_cores', m.get('cores'))} usable cores; "
            f"{' '.join(m.get('flags', []))}); providers: {', '.join(m.get('providers', []))}; "
            f"GPUs: {', '.join(m.get('gpus', [])) or 'none'}")


def _job_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for job_id, r in results["jobs"].items():
        load = sorted(r["load_s"])[len(r["load_s"]) // 2]
        fid = f", cosine_min {r['fidelity']['cosine_min']:.5f}" if r.get("fidelity") else ""
        cls = f", CPU class {r['env']['cpu_class']}" if r["env"].get("cpu_class") else ""
        lines.append(f"{job_id}: {r['recipe']} ({r['env']['precision']}{cls}), providers "
                     f"{', '.join(r['env']['providers']) or '-'}, {r['threads']} threads"
                     f"{', IO binding' if r['env']['io_binding'] else ''}; load {load:.2f} s, peak RSS "
                     f"{max(r['peak_rss_mb']):.0f} MB, {r['artifact_mb']:.1f} MB{fid}")
        if r.get("exits"):
            ex = r["exits"]
            lines.append("  early exit: mean layers of " + str(ex["total_layers"]) + " — " + ", ".join(
                f"{k} {v:.2f}" for k, v in ex["mean_layers"].items()))
        lines += [f"  note: {n}" for n in r["notes"]]
    return lines


def table(results: dict[str, Any]) -> str:
    """Aligned text table of every job x shape (latencies in ms), then per-job facts and notes."""
    rows = [list(_COLUMNS)] + _rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    out = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    o = results["overhead"]
    out += ["", *_job_lines(results), "", f"machine: {_machine_line(results)}",
            f"harness overhead {o['harness_us']:.2f} µs per call = {o['percent']:.3f} % of the smallest p50"
            + (" (over the 1 % target: latencies this small are partly the harness)" if o["percent"] >= 1 else "")]
    out += [f"note: {n}" for n in results.get("notes", [])]
    return "\n".join(out)


def verdict_table(verdicts: list[Verdict]) -> str:
    """One line per verdict: status, margin, measured vs limit, what it was."""
    lines = []
    for v in verdicts:
        mark = {"pass": "PASS", "fail": "FAIL", "inconclusive": "????"}[v.status]
        extra = f"  ({v.detail})" if v.detail else ""
        confirmed = " [confirmed by re-measuring]" if v.confirmed else ""
        lines.append(f"{mark}  {v.margin:+7.1%}  {v.measured:>10.4g} vs {v.limit:<10.4g}  {v.name}{confirmed}{extra}")
    return "\n".join(lines)


def markdown(results: dict[str, Any], verdicts: list[Verdict] | None = None) -> str:
    """The results (and verdicts) as Markdown, with the machine and command they came from."""
    a = results["artifacts"]
    lines = [f"# bertship bench: profile {results['profile']['name']}", "",
             f"- machine: {_machine_line(results)}; Python {results['machine'].get('python')}",
             f"- created {results['created']}; command: `{results['command']}`",
             *(f"- {role}: `{x['path']}` (recipe {x['recipe']})" for role, x in a.items()),
             f"- settings: {', '.join(f'{k} {v}' for k, v in results['settings'].items())}", "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    lines += ["", "Latencies in ms; floor = the best round's median call (text: best pass); loaded = rounds timed "
              "under foreign CPU load after re-measuring.", "", *(f"- {x}" for x in _job_lines(results))]
    o = results["overhead"]
    lines += ["", f"Harness overhead: {o['harness_us']:.2f} µs per call = {o['percent']:.3f} % of the smallest p50."]
    lines += [f"- note: {n}" for n in results.get("notes", [])]
    if verdicts:
        lines += ["", "## Checks", "", "| status | margin | measured | limit | check | detail |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {v.status}{' (confirmed)' if v.confirmed else ''} | {v.margin:+.1%} | {v.measured:.4g} | "
                  f"{v.limit:.4g} | {v.name} | {v.detail} |" for v in verdicts]
    return "\n".join(lines) + "\n"


def junit(verdicts: list[Verdict], path: str | Path, suite: str) -> Path:
    """JUnit XML, one testcase per verdict: a failure for a failed budget, an error for an inconclusive one."""
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(verdicts)),
                         failures=str(sum(v.status == "fail" for v in verdicts)),
                         errors=str(sum(v.status == "inconclusive" for v in verdicts)), skipped="0")
    for v in verdicts:
        case = ET.SubElement(node, "testcase", classname=f"{suite}.{v.kind}", name=v.name)
        text = f"measured {v.measured:.6g}, limit {v.limit:.6g}, margin {v.margin:+.2%}" + (
            f"; {v.detail}" if v.detail else "")
        if v.status == "fail":
            ET.SubElement(case, "failure", message=text, type="BudgetError").text = text
        elif v.status == "inconclusive":
            ET.SubElement(case, "error", message=text, type="InconclusiveError").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
