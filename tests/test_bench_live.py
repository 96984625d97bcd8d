"""`bertship bench` and `check` measuring the tiny artifact for real, providers, IO binding, and the GPU path.

No timing assertions: the numbers of a shared 2-core machine vary; what is tested is what gets measured and recorded.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from bertship.bench.run import summarize_job
from bertship.cli import main
from bertship.runtimes import load
from bertship.runtimes.errors import MachineError, UsageError
from bertship.runtimes.providers import place

PROFILE = """
name = "tiny"
[recipes]
candidates = ["fp32"]
[[runtimes]]
backend = "onnxruntime"
providers = ["XnnpackExecutionProvider", "CPUExecutionProvider"]
io_binding = true
threads = [1]
[[runtimes]]
backend = "openvino"
threads = [1]
[workload]
batches = [1, 2]
sequences = [16]
text = "texts.txt"
text_batch = 4
[measure]
warmup = 1
iterations = 3
rounds = 2
passes = 1
[[budgets]]
metric = "p95_ms"
shape = "1x16"
max = 5000.0
[[budgets]]
metric = "p50_ms"
shape = "2x16"
max_ratio = 100.0
[[budgets]]
metric = "cosine_min"
min = 0.999
[[budgets]]
metric = "load_s"
max = 60.0
"""


@pytest.fixture
def tiny_profile(tmp_path):
    (tmp_path / "texts.txt").write_text("a short one\n" + "a much longer text about the farmer and the fox\n" * 5)
    path = tmp_path / "tiny.toml"
    path.write_text(PROFILE)
    return str(path)


def test_bench_records_raw_blocks_and_the_environment(tiny_artifact, tiny_profile, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", str(tiny_artifact), "--profile", tiny_profile, "--json", str(out), "--markdown",
                 str(tmp_path / "bench.md"), "--plots", str(tmp_path / "plots")])
    assert code == 0
    text = capsys.readouterr()
    assert "harness overhead" in text.out and "[bench] 2/2" in text.err  # per-job lines when stderr is no TTY
    data = json.loads(out.read_text())
    assert set(data["jobs"]) == {"candidate/onnxruntime/threads=1", "candidate/openvino/threads=1"}
    ort = data["jobs"]["candidate/onnxruntime/threads=1"]
    assert ort["env"]["precision"] == "fp32" and ort["env"]["providers"] == ["CPUExecutionProvider"]
    assert ort["env"]["io_binding"] and ort["env"]["packages"]["onnxruntime"]
    from bertship.runtimes.cpuclass import runtime_class

    assert ort["env"]["cpu_class"] == runtime_class("onnxruntime")  # the class the worker's kernels measured
    assert any("XnnpackExecutionProvider is not in this onnxruntime build" in n for n in ort["notes"])
    assert data["jobs"]["candidate/openvino/threads=1"]["env"]["precision"] == "f32"
    assert set(ort["shapes"]) == {"1x16", "2x16", "text"}
    blocks = ort["shapes"]["1x16"]["blocks"]
    assert sum(b["kept"] for b in blocks) == 2 and all(isinstance(x, float) for b in blocks for x in b["ms"])
    assert ort["shapes"]["text"]["summary"]["throughput"] > 0 and ort["fidelity"]["cosine_min"] > 0.999
    assert data["machine"]["flags"] and data["overhead"]["percent"] > 0
    assert (tmp_path / "plots" / "latency_distribution.png").stat().st_size > 0
    assert (tmp_path / "plots" / "latency_vs_shape.png").exists() and "| job |" in (tmp_path / "bench.md").read_text()


def test_check_measures_judges_and_writes_junit(tiny_artifact, tiny_profile, tmp_path, capsys):
    base = tmp_path / "base.json"
    assert main(["bench", str(tiny_artifact), "--profile", tiny_profile, "--backends", "onnxruntime",
                 "--json", str(base)]) == 0
    xml = tmp_path / "budgets.xml"
    code = main(["check", str(tiny_artifact), "--profile", tiny_profile, "--reference", str(tiny_artifact),
                 "--backends", "onnxruntime", "--baseline", str(base), "--junit", str(xml), "--json",
                 str(tmp_path / "check.json")])
    assert code in (0, 7, 9)  # the budget part passes by construction; the baseline part is timing, not asserted
    cases = ET.parse(xml).getroot().findall("testsuite/testcase")
    names = [c.get("name") for c in cases]
    assert len(cases) == 4 + 3  # four budgets on one job, three shapes against the baseline
    assert any(n.startswith("p50_ms 2x16 <= 100 x reference") for n in names)
    verdicts = json.loads((tmp_path / "check.json").read_text())["check"]["verdicts"]
    assert all(v["status"] == "pass" for v in verdicts if v["kind"] == "budget")
    other = json.loads(base.read_text())
    other["workload"]["shapes"] = ["1x16"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    code = main(["check", str(tiny_artifact), "--profile", tiny_profile, "--reference", str(tiny_artifact),
                 "--baseline", str(tmp_path / "other.json")])
    assert code == 2 and "[bench]" not in capsys.readouterr().err  # refused before anything was timed


def test_a_failing_timing_budget_is_re_measured_before_it_fails(tiny_artifact, tiny_profile, tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text(PROFILE.replace("max = 5000.0", "max = 0.0001") + "[baseline]\nconfirm_pause_s = 0.0\n")
    out = tmp_path / "check.json"
    code = main(["check", str(tiny_artifact), "--profile", str(strict), "--backends", "onnxruntime", "--reference",
                 str(tiny_artifact), "--json", str(out)])
    assert code in (7, 9)  # 9 only when the machine was busy with other processes throughout
    check = json.loads(out.read_text())["check"]
    assert check["remeasured"] == ["candidate/onnxruntime/threads=1"]  # the reference passed its budget: not again
    p95 = [v for v in check["verdicts"] if v["metric"] == "p95_ms"][0]
    assert p95["status"] != "pass" and (p95["confirmed"] or p95["status"] == "inconclusive")
    record = json.loads(out.read_text())["jobs"]["candidate/onnxruntime/threads=1"]
    passes = {b["pass"] for b in record["shapes"]["1x16"]["blocks"]}
    assert passes == {0, 1}  # the re-measurement's blocks are kept beside the first ones


def test_check_refuses_a_profile_this_machine_does_not_fit(tiny_artifact, capsys):
    assert main(["check", str(tiny_artifact), "--profile", "gpu"]) == 8
    assert "no NVIDIA GPU" in capsys.readouterr().err
    assert main(["bench", str(tiny_artifact), "--profile", "mobile-arm"]) == 8


def test_check_refuses_a_relative_budget_without_reference_before_measuring(tiny_artifact, tiny_profile, capsys):
    assert main(["check", str(tiny_artifact), "--profile", tiny_profile]) == 2
    err = capsys.readouterr().err
    assert "--reference" in err and "[bench]" not in err


def test_bench_refuses_shapes_longer_than_the_artifact_and_bad_threads(tiny_artifact, tiny_profile, capsys):
    assert main(["bench", str(tiny_artifact), "--profile", tiny_profile, "--shapes", "1x512"]) == 2
    assert "max length 64" in capsys.readouterr().err
    assert main(["bench", str(tiny_artifact), "--profile", tiny_profile, "--threads", "0"]) == 2


def test_provider_placement_skips_with_a_note_or_refuses():
    placed = place(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                   {"TensorrtExecutionProvider": {"trt_sparsity_enable": True}}, have=["CPUExecutionProvider"])
    assert placed.session_providers() == [("CPUExecutionProvider", {})] and placed.device == "cpu"
    assert len(placed.notes) == 2 and "onnxruntime-gpu" in placed.notes[1]
    gpu = place(["TensorrtExecutionProvider", "CUDAExecutionProvider"], {"TensorrtExecutionProvider":
                {"trt_sparsity_enable": True}}, have=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert gpu.device == "cuda" and gpu.providers[0] == ("TensorrtExecutionProvider", {"trt_sparsity_enable": True})
    with pytest.raises(MachineError, match="no CUDAExecutionProvider"):
        place(["CUDAExecutionProvider"], require=["CUDAExecutionProvider"], have=["CPUExecutionProvider"])
    with pytest.raises(UsageError, match="unknown execution provider"):
        place(["CudaProvider"], have=["CPUExecutionProvider"])


def test_io_binding_on_cpu_gives_the_same_outputs(tiny_artifact):
    plain = load(tiny_artifact, backend="onnxruntime")
    bound = load(tiny_artifact, backend="onnxruntime", runner_options={"io_binding": True, "io_device": "cpu"})
    texts = ["first text", "a second and longer text", "third"]
    np.testing.assert_array_equal(plain.encode(texts), bound.encode(texts))
    feeds = plain.tokenizer.pad(plain.tokenizer.tokenize(texts))
    first, second = bound.run(feeds)["logits"], bound.run(feeds)["logits"]
    assert not np.shares_memory(first, second)  # fresh arrays the caller owns, as the runner contract says


def _cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


gpu = pytest.mark.skipif(not _cuda_available(), reason="needs CUDAExecutionProvider (onnxruntime-gpu and an NVIDIA GPU)")


@pytest.mark.gpu
@gpu
def test_cuda_with_io_binding_matches_cpu(tiny_artifact):
    placed = place(["CUDAExecutionProvider", "CPUExecutionProvider"], require=["CUDAExecutionProvider"])
    cuda = load(tiny_artifact, backend="onnxruntime", runner_options={
        "providers": placed.session_providers(), "io_binding": True, "io_device": placed.device})
    assert cuda.runner.providers[0] == "CUDAExecutionProvider"
    texts = ["first text", "a second and longer text"]
    np.testing.assert_allclose(cuda.encode(texts), load(tiny_artifact, backend="onnxruntime").encode(texts), atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_profile_benches_on_cuda(tiny_artifact, tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["bench", str(tiny_artifact), "--profile", "gpu", "--shapes", "1x16,8x32", "--json", str(out)]) == 0
    env = json.loads(out.read_text())["jobs"]["candidate/onnxruntime/threads=1"]["env"]
    assert "CUDAExecutionProvider" in env["providers"] and env["io_binding"]


LIVE = """
name = "live"
[recipes]
candidates = ["fp32"]
[[runtimes]]
backend = "onnxruntime"
threads = [2]
[workload]
batches = [4]
sequences = [64]
[measure]
warmup = 2
iterations = 8
rounds = 3
passes = 1
[baseline]
threshold = 0.10
max_allowance = 0.15
confirm_pause_s = 0.0
[[budgets]]
metric = "peak_rss_mb"
max = {rss}
[[budgets]]
metric = "artifact_mb"
max = {size}
"""


def _live(tmp_path, rss: float = 4000.0, size: float = 400.0) -> str:
    path = tmp_path / f"live-{rss}-{size}.toml"
    path.write_text(LIVE.format(rss=rss, size=size))
    return str(path)


@pytest.mark.slow
def test_a_real_slowdown_fails_check_against_the_baseline(minilm_artifact, tmp_path):
    """A baseline that says the same job ran twice as fast: the real run, timed now, is the 2x slowdown `check` must
    catch. (An earlier version made the slowdown by running the 2-thread baseline's job on 1 thread; on a CI runner
    whose second core was busy, 2 threads were no faster than 1 and the 'slowdown' measured -2.2 %.)"""
    base = tmp_path / "base.json"
    assert main(["bench", str(minilm_artifact), "--profile", _live(tmp_path), "--json", str(base)]) == 0
    data = json.loads(base.read_text())
    for job in data["jobs"].values():
        for shape in job["shapes"].values():
            for block in shape["blocks"]:
                block["ms"] = [x / 2.0 for x in block["ms"]]
        summarize_job(job)
    base.write_text(json.dumps(data))
    out = tmp_path / "check.json"
    code = main(["check", str(minilm_artifact), "--profile", _live(tmp_path), "--baseline", str(base), "--json",
                 str(out)])
    verdicts = json.loads(out.read_text())["check"]["verdicts"]
    slower = [v for v in verdicts if v["kind"] == "baseline"]
    assert slower and all(v["status"] != "pass" for v in slower), slower
    # 9 only when other processes loaded the CPU throughout (then the slowdown cannot be pinned on the model)
    assert code == 7 or (code == 9 and all(v["status"] == "inconclusive" for v in slower))


@pytest.mark.slow
def test_memory_and_size_budgets_on_a_real_run(minilm_artifact, tmp_path):
    out = tmp_path / "ok.json"
    assert main(["check", str(minilm_artifact), "--profile", _live(tmp_path), "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    job = record["jobs"]["candidate/onnxruntime/threads=2"]
    assert 100 < max(job["peak_rss_mb"]) < 4000  # a MiniLM session: a few hundred MB
    assert 85 < job["artifact_mb"] < 100  # 90.4 MB of fp32 weights plus the tokenizer
    tight = tmp_path / "tight.json"
    code = main(["check", str(minilm_artifact), "--profile", _live(tmp_path, rss=50.0, size=10.0), "--json",
                 str(tight)])
    assert code == 7
    failed = {v["metric"] for v in json.loads(tight.read_text())["check"]["verdicts"] if v["status"] == "fail"}
    assert failed == {"peak_rss_mb", "artifact_mb"}


def test_foreign_load_is_seen_for_real():
    """Another process spinning on one of the cores while a block is timed: the watch reports it (the inconclusive
    verdicts and re-measurements build on this)."""
    import subprocess
    import sys
    import time

    from bertship.bench.procload import LoadWatch

    quiet = LoadWatch()
    time.sleep(0.3)
    idle = quiet.foreign()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 2.0: pass"])
    try:
        time.sleep(0.3)  # the spinner is up
        watch = LoadWatch()
        time.sleep(0.8)
        busy = watch.foreign()
    finally:
        spin.wait()
    assert busy is not None and busy > 0.3  # one of two cores, at least most of it
    # more than before the spinner, unless other processes already filled every core then (the share is capped at 1:
    # CI saw idle 1.0, busy 0.9988 while a benchmark ran beside the suite)
    assert idle is None or busy > idle or idle > 0.95
