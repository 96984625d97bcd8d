"""Budgets, the baseline comparison, JUnit and `bertship check --results` exit codes, on synthetic timings."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from bertship.bench import baseline
from bertship.bench.budgets import judge, outcome
from bertship.bench.check import CheckReport, raise_for
from bertship.bench.report import junit, markdown, table, verdict_table
from bertship.cli import main
from bertship.profiles import load_profile
from bertship.profiles.schema import BaselineRule
from bertship.runtimes.errors import BudgetError, InconclusiveError, UsageError
from tests.bench_data import KEY, MACHINE, PROFILE, job, results

FAST = {"1x16": [10.0, 10.2, 10.4, 10.1], "8x16": [40.0, 41.0, 40.5, 40.2]}


def scaled(rounds, factor):
    return {k: [x * factor for x in v] for k, v in rounds.items()}


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "ci.toml"
    path.write_text(PROFILE)
    return load_profile(path)


def by_metric(verdicts):
    return {v.metric: v for v in verdicts}


def test_budgets_pass_with_their_margins(profile):
    verdicts = judge(profile, results(job("candidate", FAST)))
    assert outcome(verdicts) == "pass" and len(verdicts) == 4
    v = by_metric(verdicts)
    assert v["p95_ms"].limit == 12.0 and v["p95_ms"].measured == pytest.approx(10.4 * 1.02, rel=0.01)
    assert v["p95_ms"].margin == pytest.approx((12.0 - v["p95_ms"].measured) / 12.0)
    assert v["throughput"].measured == pytest.approx(8000 / 40.25, rel=0.01) and v["throughput"].margin > 0
    assert v["artifact_mb"].measured == 23.5 and v["cosine_min"].measured == 0.99


def test_a_slow_or_big_artifact_fails(profile):
    v = by_metric(judge(profile, results(job("candidate", scaled(FAST, 1.5), recipe="fp32"))))
    assert v["p95_ms"].status == "fail" and v["p95_ms"].margin < 0
    assert v["artifact_mb"].status == "fail" and v["artifact_mb"].measured == 91.0
    assert v["throughput"].status == "pass"  # 8 / 60 ms = 133 items/s >= 100


def test_failure_under_foreign_load_is_inconclusive_but_a_pass_under_load_counts(profile):
    v = by_metric(judge(profile, results(job("candidate", scaled(FAST, 1.5), loaded=3))))
    assert v["p95_ms"].status == "inconclusive" and "loaded the CPU" in v["p95_ms"].detail
    assert v["throughput"].status == "pass"
    assert by_metric(judge(profile, results(job("candidate", FAST, loaded=4))))["p95_ms"].status == "pass"


def test_loaded_blocks_stay_out_of_the_summary_and_a_loaded_baseline_proves_nothing():
    record = job("candidate", {"1x16": [30.0, 10.0, 10.2, 10.1]}, loaded=1)[1]  # round 0 slowed by a neighbour
    summary = record["shapes"]["1x16"]["summary"]
    assert summary["p99"] < 11 and summary["loaded_rounds"] == 1 and len(record["shapes"]["1x16"]["blocks"]) == 4
    verdicts = baseline.compare(results(job("candidate", FAST)), results(job("candidate", FAST, loaded=4)), RULE)
    assert outcome(verdicts) == "inconclusive" and "record it again" in verdicts[0].detail


def test_relative_budget_uses_the_reference_of_the_same_run(tmp_path):
    path = tmp_path / "rel.toml"
    path.write_text(PROFILE + '[[budgets]]\nmetric = "p50_ms"\nshape = "1x16"\nmax_ratio = 0.6\n')
    profile = load_profile(path)
    fp32 = job("reference", scaled(FAST, 2.0), recipe="fp32")
    rel = [v for v in judge(profile, results(job("candidate", FAST), fp32)) if v.metric == "p50_ms"][0]
    assert rel.status == "pass" and rel.limit == pytest.approx(0.6 * rel.reference) and rel.job.startswith("candidate/")
    slow = [v for v in judge(profile, results(job("candidate", scaled(FAST, 1.5)), fp32)) if v.metric == "p50_ms"][0]
    assert slow.status == "fail"  # 15 ms > 0.6 x 20 ms, though it would pass an absolute 16 ms budget
    with pytest.raises(UsageError, match="--reference"):
        judge(profile, results(job("candidate", FAST)))


def test_budget_on_a_shape_or_backend_not_measured_is_refused(profile, tmp_path):
    with pytest.raises(UsageError, match="shape 1x16 was not measured"):
        judge(profile, results(job("candidate", {"8x16": FAST["8x16"]})))
    path = tmp_path / "ort.toml"
    path.write_text(PROFILE + '[[budgets]]\nmetric = "load_s"\nbackend = "onnxruntime"\nmax = 2.0\n')
    with pytest.raises(UsageError, match="applies to no measured job"):
        judge(load_profile(path), results(job("candidate", FAST, backend="openvino")))


RULE = BaselineRule(threshold=0.10, max_allowance=0.15)


def test_baseline_passes_noise_and_catches_a_25_percent_slowdown():
    base = results(job("candidate", FAST))
    same = baseline.compare(results(job("candidate", scaled(FAST, 1.06))), base, RULE)
    assert outcome(same) == "pass" and len(same) == 2 and all(v.kind == "baseline" for v in same)
    slow = baseline.compare(results(job("candidate", scaled(FAST, 1.25))), base, RULE)
    assert outcome(slow) == "fail" and all(v.measured / v.reference == pytest.approx(1.25) for v in slow)
    # only the best round counts: two slow rounds of four (a slow phase) do not make a slowdown
    phase = {k: [v[0], v[1] * 1.6, v[2] * 1.6, v[3]] for k, v in FAST.items()}
    assert outcome(baseline.compare(results(job("candidate", phase)), base, RULE)) == "pass"


def test_allowance_widens_with_the_baseline_spread_up_to_the_cap():
    assert baseline.allowance(RULE, 0.01) == 0.10
    assert baseline.allowance(RULE, 0.06) == pytest.approx(0.12)
    assert baseline.allowance(RULE, 0.50) == 0.15  # still below the 25 % a check must catch


@pytest.mark.parametrize("change, message", [
    (lambda r: r["artifacts"]["candidate"]["model_key"].update(hidden_size=384), "another model"),
    (lambda r: r["artifacts"]["candidate"]["model_key"].update(outputs=["sentence_embedding"]), "another model"),
    (lambda r: r["workload"].update(shapes=["1x16"]), "measured shapes"),
    (lambda r: r["machine"].update(model="AMD EPYC 9R14"), "was measured on a AMD EPYC"),
    (lambda r: r.update(jobs={k.replace("threads=2", "threads=4"): v for k, v in r["jobs"].items()}), "no job in common"),
    (lambda r: r.update(bertship_bench=99), "not a bertship bench JSON"),
])
def test_an_incompatible_baseline_is_refused(change, message):
    base = results(job("candidate", FAST))
    change(base)
    with pytest.raises(UsageError, match=message) as err:
        baseline.check_compatible(results(job("candidate", FAST)), base)
    assert err.value.exit_code == 2


def test_junit_has_one_testcase_per_check(profile, tmp_path):
    run = results(job("candidate", scaled(FAST, 1.5), recipe="fp32"))
    verdicts = judge(profile, run) + baseline.compare(run, results(job("candidate", FAST)), RULE)
    path = junit(verdicts, tmp_path / "out" / "budgets.xml", "bertship check ci")
    suite = ET.parse(path).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(verdicts) == int(suite.get("tests")) == 6
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert int(suite.get("failures")) == len(failed) == 4  # p95, artifact size, two baseline shapes
    assert any(n.startswith("p95_ms 1x16 <= 12 [candidate/onnxruntime/threads=2]") for n in failed)
    assert "margin" in cases[0].find("failure").get("message")
    assert "| fail |" in markdown(run, verdicts) and "FAIL" in verdict_table(verdicts) and "p95" in table(run)


def test_raise_for_maps_outcomes_to_exit_codes(profile):
    fail = CheckReport(results(), judge(profile, results(job("candidate", scaled(FAST, 1.5)))))
    with pytest.raises(BudgetError) as err:
        raise_for(fail)
    assert err.value.exit_code == 7 and "checks failed" in str(err.value)
    unsure = CheckReport(results(), judge(profile, results(job("candidate", scaled(FAST, 1.5), loaded=4))))
    with pytest.raises(InconclusiveError) as err:
        raise_for(unsure)
    assert err.value.exit_code == 9
    raise_for(CheckReport(results(), judge(profile, results(job("candidate", FAST)))))


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_check_results_cli_exit_codes(tmp_path, capsys):
    prof = _write(tmp_path, "ci.toml", PROFILE)
    ok = _write(tmp_path, "ok.json", results(job("candidate", FAST)))
    slow = _write(tmp_path, "slow.json", results(job("candidate", scaled(FAST, 1.3))))
    loaded = _write(tmp_path, "loaded.json", results(job("candidate", scaled(FAST, 1.3), loaded=4)))
    old_cpu = _write(tmp_path, "old.json", results(job("candidate", FAST), machine={**MACHINE, "flags": ["avx2"]}))
    other = _write(tmp_path, "other.json", results(job("candidate", FAST), key={**KEY, "hidden_size": 64}))
    xml = tmp_path / "budgets.xml"
    assert main(["check", "--profile", prof, "--results", ok, "--junit", str(xml)]) == 0
    assert "PASS: 4 passed" in capsys.readouterr().out
    assert len(ET.parse(xml).getroot().findall("testsuite/testcase")) == 4
    assert main(["check", "--profile", prof, "--results", slow, "--baseline", ok, "--junit", str(xml)]) == 7
    assert ET.parse(xml).getroot().find("testsuite").get("failures") == "3"
    assert "checks failed" in capsys.readouterr().err
    assert main(["check", "--profile", prof, "--results", ok, "--baseline", ok]) == 0
    assert main(["check", "--profile", prof, "--results", loaded]) == 9
    assert main(["check", "--profile", prof, "--results", old_cpu]) == 8
    assert "avx512_vnni" in capsys.readouterr().err
    assert main(["check", "--profile", prof, "--results", ok, "--baseline", other]) == 2
    assert main(["check", "--profile", prof, "--results", ok, "--shapes", "1x16"]) == 2
    assert main(["check", "--profile", prof, "--results", str(tmp_path / "nope.json")]) == 2
    assert main(["check", "--profile", prof, "--results", _write(tmp_path, "bad.json", "{")]) == 2
    assert main(["check", "--profile", "laptop", "--results", ok]) == 2
    assert main(["check", "--profile", prof]) == 2
