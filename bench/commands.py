"""The `bertship profiles`, `bench` and `check` commands: argparse namespaces in, library calls, printed results out.

Torch-free, so `bertship check` runs on a device or CI runner that has only the runtime installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import UsageError


def _split(text: str | None) -> tuple[str, ...] | None:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else None


def _threads(text: str | None) -> tuple[int | str, ...] | None:
    items = _split(text)
    if items is None:
        return None
    try:
        return tuple(s if s == "cores" else int(s) for s in items)
    except ValueError:
        raise UsageError(f"--threads {text!r} is not a list of thread counts — write e.g. 1,2 or cores") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from bertship.profiles import parse_shape

    shapes = _split(args.shapes)
    for shape in shapes or ():
        parse_shape(shape)
    backends = _split(args.backends)
    if backends:
        from bertship.runtimes.backends import parse_backends

        backends = parse_backends(list(backends))
    threads = _threads(args.threads)
    if threads and any(t != "cores" and t < 1 for t in threads):
        raise UsageError(f"--threads {args.threads!r} has a count below 1 — write e.g. 1,2 or cores")
    return {"shapes": shapes, "threads": threads, "only_backends": backends, "text": args.text}


def _command(args: argparse.Namespace) -> str:
    parts = ["bertship", args.command] + ([args.artifact] if args.artifact else [])
    for key in ("profile", "reference", "baseline", "results", "shapes", "threads", "backends", "text"):
        if getattr(args, key, None):
            parts += [f"--{key}", str(getattr(args, key))]
    return " ".join(parts)


def read_json(path: str, option: str) -> dict[str, Any]:
    """A bench JSON given on the command line; UsageError when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{option} {path!r} does not exist — pass the --json file of an earlier `bertship bench`"
                         ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path!r} is not JSON ({exc}) — pass the --json file of `bertship bench`") from None


def _write(results: dict[str, Any], verdicts: list | None, args: argparse.Namespace) -> None:
    from .report import markdown

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(results, verdicts), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if args.plots:
        try:
            from .plots import write_plots

            for path in write_plots(results, Path(args.plots)):
                print(f"wrote {path}")
        except ImportError:
            print("bertship: note: matplotlib is not installed, no plots — pip install 'bertship[plots]'",
                  file=sys.stderr)


def profiles(args: argparse.Namespace) -> int:
    """`bertship profiles [show NAME|FILE] [--json]`."""
    from bertship.profiles import load_profile, machine_facts, shipped
    from bertship.profiles.describe import describe

    if args.action is None:
        for name in shipped():
            print(f"{name:<12} {load_profile(name).description}")
        print("\n`bertship profiles show NAME` prints one; pass a .toml path anywhere a profile name goes")
        return 0
    if args.action != "show" or not args.name:
        raise UsageError(f"unknown profiles action {args.action!r} — use `bertship profiles` or "
                         "`bertship profiles show NAME`")
    profile = load_profile(args.name)
    print(json.dumps(profile.as_dict(), indent=2) if args.json else describe(profile, machine_facts()))
    return 0


def bench(args: argparse.Namespace) -> int:
    """`bertship bench ARTIFACT --profile P`: measure and report; judges nothing."""
    from bertship.profiles import load_profile

    from .report import table
    from .run import bench as run_bench

    results = run_bench(load_profile(args.profile), args.artifact, args.reference, command=_command(args),
                        **_overrides(args))
    print(table(results))
    _write(results, None, args)
    return 0


def check(args: argparse.Namespace) -> int:
    """`bertship check [ARTIFACT] --profile P`: exit 0 when every budget passes, 7/8/9/2 otherwise (see --help)."""
    from bertship.profiles import load_profile

    from .check import check as run_check, raise_for
    from .report import junit, table, verdict_table

    profile = load_profile(args.profile)
    baseline = read_json(args.baseline, "--baseline") if args.baseline else None
    if args.results:
        given = [f"--{k}" for k in ("reference", "shapes", "threads", "backends", "text") if getattr(args, k)]
        if given:
            raise UsageError(f"--results judges numbers already measured; {', '.join(given)} would change nothing — "
                             "drop them, or measure again without --results")
        report = run_check(profile, args.artifact, baseline=baseline, results=read_json(args.results, "--results"))
    else:
        if not args.artifact:
            raise UsageError("nothing to check — pass an ARTIFACT, or --results FILE of an earlier `bertship bench`")
        report = run_check(profile, args.artifact, reference=args.reference, baseline=baseline,
                           command=_command(args), **_overrides(args))
    print(table(report.results))
    print()
    print(verdict_table(report.verdicts))
    if args.junit:
        print(f"wrote {junit(report.verdicts, args.junit, f'bertship check {profile.name}')}")
    _write(report.as_dict(), report.verdicts, args)
    counts = {s: sum(v.status == s for v in report.verdicts) for s in ("pass", "fail", "inconclusive")}
    print(f"{report.status.upper()}: {counts['pass']} passed, {counts['fail']} failed, {counts['inconclusive']} "
          f"inconclusive of {len(report.verdicts)} checks" + (f"; re-measured {', '.join(report.remeasured)}"
                                                             if report.remeasured else ""))
    raise_for(report)
    return 0
