"""CPU classes for int8: the probe, the emulated no-VNNI class, artifacts built for a class, and load()'s re-check.

One machine has one CPU class. The no-VNNI class (x86 AVX2, or AVX-512 without VNNI) is also run here for real, on a
VNNI or AMX machine: OpenVINO held to AVX2 by ONEDNN_MAX_CPU_ISA, ONNX Runtime under qemu-x86_64 -cpu Haswell (whose
MLAS reads CPUID itself). Each such test first checks, with the probe, that the emulation took. On an AVX2 machine the
same tests run the class natively too, and assert what that class gives.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertship.exporter import export
from bertship.runtimes import cpuclass, load, verify
from bertship.runtimes.errors import FidelityError, UsageError

from . import tiny

pytestmark = pytest.mark.xdist_group("cpu-classes")  # its module fixtures are made on one xdist worker

NOVNNI = "x86-novnni"
X86 = cpuclass.flags_class().startswith("x86")
HERE = cpuclass.runtime_class("onnxruntime")


def emulated(backend: str) -> cpuclass.Emulation:
    if not X86:
        pytest.skip("the no-VNNI class is an x86 class: it cannot run on this CPU")
    emu = cpuclass.emulation(backend, NOVNNI)
    if emu is None:
        pytest.skip("no qemu-x86_64 here to run ONNX Runtime's AVX2 kernels (apt-get install qemu-user-static)")
    return emu


def run_emulated(backend: str, code: str, *args: str) -> subprocess.CompletedProcess:
    emu = emulated(backend)
    return subprocess.run([*emu.prefix, sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **emu.env}, timeout=300, check=False)


def test_the_shipped_probe_is_the_model_it_describes():
    assert base64.b64decode(cpuclass._PROBE_B64) == cpuclass._probe_model()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_probe_agrees_with_the_cpu_flags_here(backend):
    """Natively the measured class is the one /proc/cpuinfo names: exact sums with VNNI/AMX, saturated without."""
    value = cpuclass.probe_value(backend)
    assert cpuclass.runtime_class(backend) == cpuclass.flags_class()
    if X86:
        assert (value == cpuclass.EXACT) is (cpuclass.flags_class() == "x86-vnni")
        if value != cpuclass.EXACT:  # VPMADDUBSW: each pair of 255 x 127 products capped at 32767
            assert value == 32767 * cpuclass._K // 2


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_emulated_no_vnni_class_saturates_like_an_avx2_cpu(backend):
    code = ("from bertship.runtimes import cpuclass as c; import sys; "
            "print(c.runtime_class(sys.argv[1]), c.probe_value(sys.argv[1]))")
    done = run_emulated(backend, code, backend)
    assert done.returncode == 0, done.stderr[-2000:]
    cls, value = done.stdout.split()
    assert cls == NOVNNI and float(value) == 32767 * cpuclass._K // 2


@pytest.mark.parametrize("arch,flags,expected", [
    ("x86_64", ["avx2", "fma"], "x86-novnni"), ("x86_64", ["avx512f", "avx512bw"], "x86-novnni"),
    ("x86_64", ["avx2", "avx_vnni"], "x86-vnni"), ("x86_64", ["amx_int8", "avx512_vnni"], "x86-vnni"),
    ("aarch64", ["asimd", "asimddp", "i8mm"], "arm64-dot"), ("aarch64", ["asimd"], "arm64"), ("riscv64", [], "other"),
])
def test_class_of_flags(arch, flags, expected):
    assert cpuclass.class_of(arch, flags) == expected


def test_unknown_target_cpu_is_refused(tiny_folder, tmp_path, capsys):
    from bertship.cli import main

    assert main(["export", str(tiny_folder("bert")), "--target-cpu", "x86-avx3", "--out", str(tmp_path / "o")]) == 2
    assert "x86-vnni, x86-novnni, arm64-dot, arm64" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError):
        export(tiny_folder("bert"), out=tmp_path / "o", target_cpu="avx2")


@pytest.fixture(scope="module")
def compacted(tmp_path_factory):
    """The compacted tiny classifier whose int8-static artifact an AVX2-only CPU refused (argmax agreement 0.88)
    before int8 followed the CPU class: exported for each x86 class, ONNX Runtime."""
    from bertship.exporter.compact import compact

    from .test_compact import zero_pattern

    model, tokenizer = tiny.build("bert", "sequence-classification", layers=3)
    zero_pattern(model)
    model, _ = compact(model)
    root = tmp_path_factory.mktemp("classes")
    out: dict[str, Path | FidelityError] = {}
    for target in ("x86-vnni", NOVNNI):
        try:
            out[target] = export(model, tokenizer, task="sequence-classification", out=root / target,
                                 recipe="int8-static", backends="onnxruntime", allow_missing_fusions=True,
                                 target_cpu=target, log=lambda _: None)
        except FidelityError as exc:  # built for VNNI on a CPU without it: the gate may refuse it here
            out[target] = exc
    out["model"] = (model, tokenizer)
    return out


def _emulated_report(path: Path) -> dict | str:
    """verify() of the artifact on ONNX Runtime's no-VNNI kernels: its report, or the failure it raised."""
    code = ("from bertship.runtimes import verify\nimport json, sys\ntry:\n    print(json.dumps(verify(sys.argv[1])))\n"
            "except Exception as exc:\n    print('FAILED', exc)")
    done = run_emulated("onnxruntime", code, str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.splitlines()[-1]
    return last if last.startswith("FAILED") else json.loads(last)["onnxruntime"]


@pytest.mark.slow
def test_int8_static_built_for_no_vnni_holds_on_no_vnni_kernels(compacted):
    """7-bit weights (reduce_range) keep every u8 x s8 pair sum exact on AVX2 kernels: the artifact holds there as
    on VNNI, and the export checked it there itself (natively on an AVX2 CPU, under qemu on a VNNI one)."""
    art = compacted[NOVNNI]
    manifest = json.loads((art / "manifest.json").read_text())
    entry = manifest["backends"]["onnxruntime"]
    assert entry["build"]["reduce_range"] is True and entry["cpu_class"]["target"] == NOVNNI
    assert NOVNNI in [v["class"] for v in entry["cpu_class"]["verified_on"]]
    report = _emulated_report(art)
    assert isinstance(report, dict), report
    assert report["cpu_class"] == NOVNNI
    assert min(o["cosine_min"] for o in report["outputs"]) > 0.99
    native = verify(art)["onnxruntime"]
    assert min(o["cosine_min"] for o in native["outputs"]) > 0.99


@pytest.mark.slow
def test_int8_static_built_for_vnni_is_damaged_on_no_vnni_kernels(compacted):
    """The same model with 8-bit weights saturates on AVX2 kernels: refused there (by the gate of an AVX2 machine, or
    by verify on AVX2 kernels) or measurably worse (min cosine < 0.99 where the 7-bit build holds)."""
    art = compacted["x86-vnni"]
    if isinstance(art, FidelityError):
        assert HERE == NOVNNI, f"refused on a VNNI machine: {art}"
        return
    entry = json.loads((art / "manifest.json").read_text())["backends"]["onnxruntime"]
    assert entry["build"]["reduce_range"] is False
    if HERE == NOVNNI:  # it passed this machine's gate on saturating kernels: its margin must show the damage
        report = verify(art)["onnxruntime"]
    else:
        assert [v["class"] for v in entry["cpu_class"]["verified_on"]] == ["x86-vnni"]
        report = _emulated_report(art)
    if isinstance(report, str):
        assert "output check(s) failed" in report
    else:
        assert report["cpu_class"] == NOVNNI
        assert min(o["cosine_min"] for o in report["outputs"]) < 0.99


@pytest.mark.slow
def test_load_rechecks_an_int8_artifact_on_a_class_it_was_not_verified_on(compacted):
    """Loaded on ONNX Runtime's kernels of another class, load() runs the golden check first, for real, and agrees
    with verify there: a miss raises FidelityError naming `bertship verify` and the re-export; a pass is reported."""
    if HERE == NOVNNI:
        pytest.skip("this AVX2 machine cannot run VNNI kernels, and the no-VNNI build was verified on both classes")
    art = compacted["x86-vnni"]
    assert load(art).recheck is None  # verified on this class at export
    code = ("from bertship.runtimes import load\nimport json, sys\ntry:\n    print(json.dumps(load(sys.argv[1]).recheck))\n"
            "except Exception as exc:\n    print('FAILED', exc)\nprint(load(sys.argv[1], recheck=False).recheck)")
    done = run_emulated("onnxruntime", code, str(art))
    assert done.returncode == 0, done.stderr[-2000:]
    first, last = done.stdout.strip().splitlines()[-2:]
    assert last == "None"
    if isinstance(_emulated_report(art), str):
        assert first.startswith("FAILED") and f"bertship verify {art}" in first
        assert f"--target-cpu {NOVNNI}" in first and "verified on x86-vnni" in first
    else:
        recheck = json.loads(first)
        assert recheck["cpu_class"] == NOVNNI and recheck["verified_on"] == ["x86-vnni"] and recheck["seconds"] > 0


def _copy_with(art: Path, dest: Path, edit) -> Path:
    """A copy of the artifact whose manifest (and golden file) `edit` changes; checksums recomputed, as a build would."""
    from bertship.exporter import package

    shutil.copytree(art, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(dest, manifest)
    package.rewrite(dest, {k: v for k, v in manifest.items() if k != "files"})
    return dest


def test_a_failed_recheck_names_verify_and_the_fix(compacted, tmp_path):
    """An artifact recorded as verified only on ARM, whose golden references no longer match what it computes here:
    load() refuses it with the command to run and the re-export to make; recheck=False loads it."""
    art = compacted[NOVNNI] if isinstance(compacted["x86-vnni"], FidelityError) else compacted["x86-vnni"]

    def elsewhere(dest: Path, manifest: dict) -> None:
        manifest["backends"]["onnxruntime"]["cpu_class"]["verified_on"] = [{"class": "arm64-dot", "how": "edited"}]
        with np.load(dest / "golden.npz") as data:
            arrays = {k: data[k] for k in data.files}
        for k in arrays:
            if k.endswith(".ref.logits"):
                arrays[k] = -arrays[k]
        np.savez(dest / "golden.npz", **arrays)

    moved = _copy_with(art, tmp_path / "moved", elsewhere)
    with pytest.raises(FidelityError) as err:
        load(moved)
    text = str(err.value)
    assert "verified on arm64-dot" in text and f"bertship verify {moved}" in text
    assert f"--target-cpu {HERE}" in text
    assert load(moved, recheck=False).recheck is None


def test_recheck_runs_only_where_it_is_needed(compacted, tmp_path, tiny_artifact):
    """A recorded class elsewhere: the re-check runs and passes here; float artifacts are never re-checked."""
    art = compacted[NOVNNI]

    def arm_only(dest: Path, manifest: dict) -> None:
        for entry in manifest["backends"].values():
            entry.setdefault("cpu_class", {"target": "arm64-dot"})["verified_on"] = [{"class": "arm64-dot",
                                                                                       "how": "edited"}]

    moved = _copy_with(art, tmp_path / "arm", arm_only)
    model = load(moved)
    assert model.recheck["cpu_class"] == HERE and model.recheck["verified_on"] == ["arm64-dot"]
    assert model.recheck["outputs"][0]["cosine_min"] > 0.99
    fp32 = _copy_with(tiny_artifact, tmp_path / "fp32", arm_only)
    assert load(fp32).recheck is None


def test_auto_for_no_vnni_skips_what_cannot_win_there_and_says_why(tiny_folder, tmp_path):
    """--recipe auto built for x86 without VNNI: static int8 is skipped with the measurement, not searched."""
    out = export(tiny_folder("bert"), out=tmp_path / "auto", recipe="auto", backends="onnxruntime",
                 target_cpu=NOVNNI, log=lambda _: None)
    record = json.loads((out / "manifest.json").read_text())["auto"]
    assert record["cpu_class"] == NOVNNI and record["winner"] == {"recipe": "fp32", "backend": "onnxruntime"}
    skipped = {c["recipe"]: c["reason"] for c in record["candidates"] if c["status"] == "skipped"}
    assert "0.94-0.98x" in skipped["int8-static"] and "AVX2" in skipped["int8-static"]
    assert "batch-mates" in skipped["int8-dynamic"]
    assert (record["timed_shape"] is None) is (HERE != NOVNNI)


@pytest.mark.slow
def test_openvino_int8_for_no_vnni_uses_overflow_fix_and_is_checked_on_avx2_kernels(tiny_folder, tmp_path):
    """NNCF's overflow_fix for every layer when built for x86 without VNNI; the export then runs the whole gate again
    on OpenVINO's AVX2 kernels (or natively on an AVX2 CPU) and records where it was checked."""
    emulated("openvino")
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "ov", recipe="int8-static",
                 backends="openvino", target_cpu=NOVNNI, log=lambda _: None)
    entry = json.loads((out / "manifest.json").read_text())["backends"]["openvino"]
    assert entry["build"]["overflow_fix"] == "enable" and entry["build"]["weights_7bit"] is True
    checked = {v["class"]: v["how"] for v in entry["cpu_class"]["verified_on"]}
    assert NOVNNI in checked
    if HERE != NOVNNI:
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in checked[NOVNNI]
    from bertship.runtimes.inspect import describe

    assert "| openvino | x86-novnni | " in describe(json.loads((out / "manifest.json").read_text()))


def test_an_emulation_that_does_not_take_writes_nothing(tiny_folder, tmp_path, monkeypatch):
    """If the other class's kernels did not run (the probe in the check process says so), the export fails instead
    of recording a check that did not happen."""
    if HERE == NOVNNI:
        pytest.skip("on an AVX2 CPU the no-VNNI class is checked natively: there is no emulation to fail")
    fake = cpuclass.Emulation((), {}, "nothing at all")
    monkeypatch.setattr(cpuclass, "emulation", lambda backend, cls: fake)
    with pytest.raises(RuntimeError, match="did not take"):
        export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "x", recipe="int8-dynamic",
               backends="onnxruntime", target_cpu=NOVNNI, log=lambda _: None)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir()]


@pytest.mark.slow
def test_a_miss_on_the_target_class_kernels_writes_nothing(compacted, tmp_path, monkeypatch):
    """Built for x86 without VNNI but (forced here) with 8-bit weights, the model that saturates there fails the
    export's own check on AVX2 kernels: exit 4's FidelityError names the class and the emulation, nothing written."""
    if HERE == NOVNNI:
        pytest.skip("on an AVX2 CPU the target class is this machine's: the gate itself is that check")
    if not isinstance(_emulated_report(compacted["x86-vnni"]), str):
        pytest.skip("the 8-bit build holds on this emulation's AVX2 kernels: there is no miss to show")
    from bertship.exporter import quantize

    monkeypatch.setattr(quantize, "seven_bit_weights", lambda ctx: False)
    model, tokenizer = compacted["model"]
    with pytest.raises(FidelityError) as err:
        export(model, tokenizer, task="sequence-classification", out=tmp_path / "x", recipe="int8-static",
               backends="onnxruntime", allow_missing_fusions=True, target_cpu=NOVNNI, log=lambda _: None)
    assert "on x86-novnni kernels" in str(err.value) and "qemu" in str(err.value) and err.value.exit_code == 4
    assert not list(tmp_path.iterdir())
