"""Device profiles: the shipped TOML files, strict parsing of bad files, and the machine check with fake CPUs."""

from __future__ import annotations

import pytest

from bertship.cli import main
from bertship.profiles import candidate_recipes, cpu_info, load_profile, mismatches, require_fit, shipped
from bertship.profiles.describe import describe
from bertship.runtimes.errors import MachineError, UsageError

MINIMAL = """
name = "mini"
[recipes]
candidates = ["fp32"]
[[runtimes]]
backend = "onnxruntime"
threads = [1]
[workload]
shapes = ["1x16"]
"""
XEON_VNNI = "model name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n"
OLD_XEON = "model name\t: Intel(R) Xeon(R) E5-2680 v4\nflags\t\t: fpu avx2 fma\n"
A76 = "processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics asimddp\nCPU part\t: 0xd0b\n"
A53 = "processor\t: 0\nFeatures\t: fp asimd aes crc32\nCPU part\t: 0xd03\n"


def facts(cpuinfo: str, arch: str = "x86_64", cores: int = 8, providers=("CPUExecutionProvider",), gpus=()):
    """machine_facts() of a fake machine."""
    return {**cpu_info(cpuinfo), "arch": arch, "usable_cores": cores, "providers": list(providers), "gpus": list(gpus)}


def write(tmp_path, text: str, name: str = "p.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_profiles_load_and_name_real_recipes():
    from bertship.exporter.recipes import RECIPES

    assert set(shipped()) >= {"server-cpu", "gpu", "mobile-arm"}
    for name in shipped():
        profile = load_profile(name)
        assert profile.name == name and profile.budgets
        assert set(candidate_recipes(name)) <= set(RECIPES)
    assert candidate_recipes("server-cpu")[0] == "int8-static" and "bf16" in candidate_recipes("server-cpu")


def test_gpu_and_mobile_profiles_say_what_they_need():
    gpu = load_profile("gpu").runtimes[0]
    assert gpu.providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider") and gpu.io_binding
    assert gpu.require == ("CUDAExecutionProvider",)
    assert dict(gpu.options_for()["TensorrtExecutionProvider"])["trt_sparsity_enable"] is True
    arm = load_profile("mobile-arm")
    assert arm.runtimes[0].providers[0] == "XnnpackExecutionProvider" and arm.runtimes[0].model_format == "ort"
    assert arm.runtimes[0].threads == (1, 2, 4)
    assert any("no XnnpackExecutionProvider" in n for n in arm.notes)
    assert {b.metric for b in arm.budgets} >= {"artifact_mb", "load_s"}


def test_a_user_file_with_relative_text_and_a_relative_budget(tmp_path):
    text = MINIMAL.replace('shapes = ["1x16"]', 'shapes = ["1x16"]\ntext = "texts.txt"') + (
        '[[budgets]]\nmetric = "p50_ms"\nshape = "1x16"\nmax_ratio = 0.5\n'
        '[[budgets]]\nmetric = "throughput"\nshape = "text"\nmin = 10\n')
    profile = load_profile(write(tmp_path, text))
    assert profile.workload.text == str(tmp_path / "texts.txt")
    assert profile.budgets[0].relative and profile.budgets[0].label() == "p50_ms 1x16 <= 0.5 x reference"


def test_disabled_optimizers_default_and_override(tmp_path):
    assert load_profile(write(tmp_path, MINIMAL)).runtimes[0].disabled_optimizers is None  # bertship's default
    text = MINIMAL.replace("threads = [1]", "threads = [1]\ndisabled_optimizers = []")
    profile = load_profile(write(tmp_path, text))
    assert profile.runtimes[0].disabled_optimizers == ()
    from bertship.bench.run import plan

    jobs, _ = plan(profile, {"candidate": {"path": "x", "backends": ["onnxruntime"]}})
    assert jobs[0].runtime["disabled_optimizers"] == []


@pytest.mark.parametrize("edit, where", [
    (("[workload]", "color = 1\n[workload]"), "color is not a known key"),
    (("[workload]", "[measure]\niters = 20\n[workload]"), "measure.iters is not a known key"),
    (("[workload]", "[measure]\niterations = \"20\"\n[workload]"), "measure.iterations must be an integer"),
    (("[workload]", "[measure]\nrounds = true\n[workload]"), "measure.rounds must be an integer"),
    (('candidates = ["fp32"]', 'candidates = ["int9"]'), "recipes.candidates[0]"),
    (('backend = "onnxruntime"', 'backend = "tensorflow"'), "runtimes[0].backend"),
    (('threads = [1]', 'threads = [0]'), "runtimes[0].threads"),
    (('threads = [1]', 'threads = [1]\nproviders = ["CUDA"]'), "runtimes[0].providers[0]"),
    (('shapes = ["1x16"]', 'shapes = ["16"]'), "workload.shapes[0]"),
    (('threads = [1]', 'threads = [1]\ndisabled_optimizers = "SkipLayerNormFusion"'), "runtimes[0].disabled_optimizers"),
    (('backend = "onnxruntime"\nthreads = [1]', 'backend = "openvino"\nthreads = [1]\ndisabled_optimizers = []'),
     "runtimes[0].disabled_optimizers applies to onnxruntime"),
    (('shapes = ["1x16"]', 'shapes = ["1x16"]\n[[budgets]]\nmetric = "p95_ms"\nshape = "1x16"\nmin = 3'),
     "budgets[0] has bound(s) ['min']"),
    (('shapes = ["1x16"]', 'shapes = ["1x16"]\n[[budgets]]\nmetric = "p95_ms"\nmax = 3'), "budgets[0].shape is missing"),
    (('shapes = ["1x16"]', 'shapes = ["1x16"]\n[[budgets]]\nmetric = "p95_ms"\nshape = "8x128"\nmax = 3'),
     "budgets[0].shape"),
    (('shapes = ["1x16"]', 'shapes = ["1x16"]\n[[budgets]]\nmetric = "latency"\nmax = 3'), "budgets[0].metric"),
    (('shapes = ["1x16"]', 'shapes = ["1x16"]\n[[budgets]]\nmetric = "p95_ms"\nshape = "1x16"\nmax = 3\nunit = "s"'),
     "budgets[0].unit is not a known key"),
    (('name = "mini"', 'name = "mini"\n[machine.isa]\nint8-dynamic = ["vnni"]'), "machine.isa.int8-dynamic"),
    (('name = "mini"', 'name = "mini"\nname2 = '), "not valid TOML"),
])
def test_bad_profiles_name_the_key_and_the_fix(tmp_path, edit, where):
    path = write(tmp_path, MINIMAL.replace(*edit))
    with pytest.raises(UsageError) as err:
        load_profile(path)
    message = str(err.value)
    assert where in message and " — " in message and "\n" not in message


def test_unknown_names_list_the_choices(tmp_path):
    with pytest.raises(UsageError, match="choose from: gpu, mobile-arm, server-cpu"):
        load_profile("laptop")
    with pytest.raises(UsageError, match="does not exist"):
        load_profile(tmp_path / "missing.toml")
    path = write(tmp_path, MINIMAL.replace('candidates = ["fp32"]', 'candidates = ["fp33"]'))
    with pytest.raises(UsageError, match="choose from: fp32, bf16"):
        load_profile(path)


def test_profiles_command(capsys, tmp_path):
    assert main(["profiles"]) == 0
    assert "server-cpu" in capsys.readouterr().out
    assert main(["profiles", "show", "mobile-arm"]) == 0
    out = capsys.readouterr().out
    assert "XnnpackExecutionProvider" in out and "this machine" in out
    assert main(["profiles", "show", "laptop"]) == 2
    assert main(["profiles", "show", str(write(tmp_path, MINIMAL)), "--json"]) == 0
    assert '"name": "mini"' in capsys.readouterr().out


def test_server_cpu_fits_every_x86_class_with_its_own_order():
    """server-cpu fits an x86 server with or without VNNI and tries, per class, the recipes that can win there."""
    profile = load_profile("server-cpu")
    assert mismatches(profile, facts(XEON_VNNI), ["int8-static", "int8-dynamic"]) == []
    assert mismatches(profile, facts(OLD_XEON), profile.recipes_for("x86-novnni")) == []
    assert profile.recipes_for("x86-vnni") == profile.recipes == ("int8-static", "int8-dynamic", "bf16", "fp32")
    assert profile.recipes_for("x86-novnni") == ("int8-dynamic", "fp32")
    assert any("avx512_bf16" in p for p in mismatches(profile, facts(XEON_VNNI), ["bf16"]))
    with pytest.raises(MachineError) as err:
        require_fit(profile, facts(OLD_XEON), ["bf16"])
    assert err.value.exit_code == 8 and "server-cpu" in str(err.value)
    text = describe(profile, facts(OLD_XEON))
    assert "fits" in text and "does NOT fit" not in text and "CPU class x86-novnni" in text
    assert "tries int8-dynamic on onnxruntime" in text and "tries fp32 on openvino" in text


def test_profile_recipes_by_class_is_validated(tmp_path):
    bad = MINIMAL.replace('candidates = ["fp32"]\n', 'candidates = ["fp32"]\n[recipes.by_class]\nx86-novnni = ["int9"]\n')
    with pytest.raises(UsageError, match="recipes.by_class.x86-novnni"):
        load_profile(write(tmp_path, bad))
    with pytest.raises(UsageError, match="recipes.by_class.sparc"):
        load_profile(write(tmp_path, MINIMAL.replace('candidates = ["fp32"]\n', 'candidates = ["fp32"]\n[recipes.by_class]\nsparc = ["fp32"]\n')))


def test_gpu_profile_without_a_gpu_names_both_missing_things():
    problems = mismatches(load_profile("gpu"), facts(XEON_VNNI))
    assert any("CUDAExecutionProvider" in p for p in problems) and any("no NVIDIA GPU" in p for p in problems)
    ok = facts(XEON_VNNI, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], gpus=["NVIDIA L4"])
    assert mismatches(load_profile("gpu"), ok) == []


def test_mobile_arm_profile_checks_arch_dotprod_and_threads():
    arm = load_profile("mobile-arm")
    assert any("architecture is x86_64" in p for p in mismatches(arm, facts(XEON_VNNI)))
    assert mismatches(arm, facts(A76, arch="aarch64")) == []
    old = mismatches(arm, facts(A53, arch="aarch64"), ["int8-dynamic"])
    assert len(old) == 1 and "asimddp" in old[0] and "ARM Cortex-A53 lacks" in old[0]
    assert any("threads 4 exceed the 2 usable cores" in p for p in mismatches(arm, facts(A76, "aarch64", cores=2)))


def test_profiles_bench_and_check_import_no_torch():
    import subprocess
    import sys

    code = ("from bertship.profiles import load_profile; load_profile('server-cpu'); load_profile('gpu')\n"
            "import bertship.bench.run, bertship.bench.check, bertship.bench.commands, bertship.bench.op_profile\n"
            "import bertship.bench.worker, bertship.bench.report, sys\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'optimum', 'nncf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
