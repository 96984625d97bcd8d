"""Report logic of the sparsity and frontier benchmarks on synthetic timings (the benchmarks themselves run from benchmarks/)."""

from __future__ import annotations

import argparse

from benchmarks import frontier, sparsity


def _latency(variant, recipe, backend, session, ms):
    return {"variant": variant, "recipe": recipe, "backend": backend, "session": session, "foreign_cores": [0.0],
            "summary": {"1x128": {"p50": ms}}}


def test_sparsity_speedups_compare_within_one_session_setting():
    lat = {}
    for recipe, backend, session, _ in sparsity.SESSIONS:
        slow = 1.25 if session != "bertship" else 1.0
        for variant, ms in (("dense", 10.0), ("zeroed", 10.0), ("compacted", 5.5)):
            lat[sparsity._name(variant, recipe, backend, session)] = _latency(variant, recipe, backend, session,
                                                                              ms * slow)
    lat[sparsity._name("compacted", "int8-static", "openvino", "bertship")]["summary"]["1x128"]["p50"] = 7.0
    rows = sparsity.speedups({"latency": lat, "flop_ratio": {"1x128": 2.0}})
    assert len(rows) == 2 * len(sparsity.SESSIONS)
    compacted = {(r["recipe"], r["backend"], r["session"]): r for r in rows if r["variant"] == "compacted"}
    assert compacted[("fp32", "onnxruntime", "bertship")]["meets_target"]  # 10 / 5.5 = 1.82 >= 0.85 x 2
    assert not compacted[("int8-static", "openvino", "bertship")]["meets_target"]  # 10 / 7 = 1.43
    ort_default = compacted[("int8-dynamic", "onnxruntime", "ort-defaults")]
    assert ort_default["dense_p50_ms"] == 12.5 and ort_default["speedup"] == 10.0 / 5.5  # its own dense row
    assert all(r["meets_target"] is None for r in rows if r["variant"] == "zeroed")


def _result(acc, b1, b8):
    return {"accuracy": acc, "flop_ratio": 1.0, "size_bytes": 1e6,
            "p50_ms": {"b1 real": b1 / 3, "1x128": b1, "8x128": b8}}


def test_frontier_judges_against_the_fastest_dense_int8():
    args = argparse.Namespace(train_rows=2048, recover_steps=800, lr=5e-5, distill=True)
    results = {"dense int8-dynamic (ORT)": _result(0.85, 6.0, 33.0),
               "dense int8-static (OpenVINO)": _result(0.84, 3.8, 24.0),
               "pruned 50% + compact + int8-dynamic (ORT)": _result(0.835, 3.9, 16.0),  # 1.5x the fastest: no
               "pruned 60% + compact + int8-static (OpenVINO)": _result(0.828, 2.0, 11.9)}  # 2.02x, -1.2 points: yes
    text = frontier.report(results, args, 60.0, [])
    assert "Fastest dense int8 artifact (b8×128): **dense int8-static (OpenVINO)**" in text
    assert "Aim at 8×128 (a pruned + int8 model >= 2x faster than the fastest dense int8 artifact, within 1.5 points " \
           "of its accuracy): met by pruned 60% + compact + int8-static (OpenVINO)." in text
    assert "Aim at 1×128 (a pruned" in text and text.count("not met by any") == 1  # 3.8 / 2.0 = 1.9x at b1
    results["pruned 60% + compact + int8-static (OpenVINO)"]["accuracy"] = 0.82  # -2.0 points
    assert frontier.report(results, args, 60.0, []).count("not met by any variant measured here") == 2


def test_op_profile_on_both_runtimes(tiny_artifact):
    from bertship.bench import op_profile

    for backend in ("onnxruntime", "openvino"):
        prof = op_profile.profile(str(tiny_artifact), backend, "2x16", threads=1, warmup=2, iters=3)
        assert prof["runs"] == 3, backend  # warm-up calls left out
        assert prof["ops_ms"] and all(v >= 0 for v in prof["ops_ms"].values())
        assert abs(prof["kernel_ms"] - sum(prof["ops_ms"].values())) < 1e-9
        assert "MatMul" in " ".join(prof["ops_ms"]) or "FullyConnected" in prof["ops_ms"], prof["ops_ms"]


def test_op_times_needs_profiling(tiny_artifact):
    import pytest

    from bertship.runtimes import UsageError, load

    with pytest.raises(UsageError, match="profile"):
        load(tiny_artifact, backend="onnxruntime").runner.op_times()


def test_compare_bounds_the_speedup_by_what_did_not_shrink():
    from bertship.bench.op_profile import compare

    dense = {"ops_ms": {"MatMul": 8.0, "LayerNorm": 2.0}, "kernel_ms": 10.0}
    compacted = {"ops_ms": {"MatMul": 4.0, "LayerNorm": 2.0}, "kernel_ms": 6.0}
    c = compare(dense, compacted, 2.0)
    assert c["fixed_ops"] == ["LayerNorm"] and c["fixed_share_dense"] == 0.2
    assert c["ceiling"] == 10.0 / (2.0 + 8.0 / 2.0) and abs(c["kernel_ratio"] - 10 / 6) < 1e-12


def test_sparse_weights_table_compares_within_one_setting():
    lat = {}
    for variant, session, ms in (("dense", "bertship", 4.0), ("dense", "sparse-weights", 4.4),
                                 (sparsity.UNSTRUCTURED, "bertship", 4.0), (sparsity.UNSTRUCTURED, "sparse-weights", 2.2)):
        lat[sparsity._name(variant, "int8-static", "openvino", session)] = _latency(
            variant, "int8-static", "openvino", session, ms)
    lines = sparsity.sparse_weights_markdown({"latency": lat, "settings": {"unstructured": [0.5, 0.8]}})
    assert "80% of every encoder weight matrix" in lines[0]
    assert "| unstructured | on | 2.20 | 2.00× |" in lines  # 4.4 / 2.2, against dense with the same setting
    assert sparsity.sparse_weights_markdown({"latency": {}, "settings": {"unstructured": []}}) == []
