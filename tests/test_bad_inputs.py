"""Bad input: a one-line error naming the problem and the fix, a documented exit code, and nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertship.cli import main
from bertship.runtimes import artifact
from tests import tiny


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("bertship: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert " — " in lines[0], "the message must say how to fix it"


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


@pytest.fixture
def folder(tiny_folder, tmp_path) -> Path:
    """A private copy of a tiny BERT feature-extraction folder that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_folder("bert", "feature-extraction"), dst)
    return dst


def test_missing_folder(capsys, tmp_path):
    code, err = run(capsys, "export", tmp_path / "nope", "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "does not exist")
    assert not (tmp_path / "out").exists()


def test_folder_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run(capsys, "export", tmp_path / "empty", "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "config.json")


def test_folder_without_weights(capsys, folder, tmp_path):
    (folder / "model.safetensors").unlink()
    code, err = run(capsys, "export", folder, "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "no weights")


def test_truncated_safetensors(capsys, folder, tmp_path):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run(capsys, "export", folder, "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "corrupt or truncated", "model.safetensors")


def test_pickle_weights_refused_unless_allowed(capsys, tmp_path):
    model, tokenizer = tiny.build("bert", "feature-extraction")
    src = tmp_path / "pickled"
    model.save_pretrained(src, safe_serialization=False)
    tokenizer.save_pretrained(src)
    assert (src / "pytorch_model.bin").exists() and not (src / "model.safetensors").exists()
    code, err = run(capsys, "export", src, "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "pickle", "--allow-pickle")
    assert not (tmp_path / "out").exists()
    code, _ = run(capsys, "export", src, "--out", tmp_path / "out", "--allow-pickle", "--backends", "onnxruntime")
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["format"] == "pickle"


def test_unknown_family(capsys, folder, tmp_path):
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    code, err = run(capsys, "export", folder, "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "'gpt2'", "bert", "distilbert", "roberta", "albert", "mobilebert")


def test_unknown_task(capsys, folder, tmp_path):
    code, err = run(capsys, "export", folder, "--task", "summarization", "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "summarization", "sequence-classification")


def test_remote_code_never_enabled(capsys, folder, tmp_path):
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    code, err = run(capsys, "export", folder, "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "auto_map")


def test_task_head_mismatch(capsys, folder, tmp_path):
    """A checkpoint without a classifier must not be exported with a randomly initialised one."""
    code, err = run(capsys, "export", folder, "--task", "sequence-classification", "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "no trained weights", "classifier")


def test_sequence_longer_than_positions(capsys, folder, tmp_path):
    code, err = run(capsys, "export", folder, "--max-length", 4096, "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "4096", str(tiny.MAX_POSITIONS))


def test_pooling_on_other_task(capsys, folder, tmp_path):
    code, err = run(capsys, "export", folder, "--task", "feature-extraction", "--pooling", "cls", "--out", tmp_path / "o")
    assert code == 2
    assert_one_line_error(err, "--pooling")


def test_unknown_backend(capsys, folder, tmp_path):
    code, err = run(capsys, "export", folder, "--backends", "onnxruntime,tensorflow", "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, "tensorflow", "onnxruntime", "openvino")


def test_backend_not_installed(capsys, folder, tmp_path, monkeypatch):
    from bertship.runtimes import backends

    monkeypatch.setattr(backends, "is_installed", lambda name: name != "openvino")
    code, err = run(capsys, "export", folder, "--out", tmp_path / "out")
    assert code == 6
    assert_one_line_error(err, "openvino", "pip install 'bertship[openvino]'")


def test_export_without_torch_names_the_extra(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, err = run(capsys, "export", "--out", tmp_path / "out")
    assert code == 6
    assert_one_line_error(err, "bertship[export]")


def test_existing_out_refused_without_force(capsys, folder, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, "export", folder, "--out", out, "--backends", "onnxruntime")[0] == 0
    before = (out / "manifest.json").read_text()
    code, err = run(capsys, "export", folder, "--out", out, "--backends", "onnxruntime")
    assert code == 2
    assert_one_line_error(err, "already exists", "--force")
    assert (out / "manifest.json").read_text() == before
    assert run(capsys, "export", folder, "--out", out, "--backends", "openvino", "--force")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["backends"]) == ["openvino"]
    assert not (out / "onnxruntime").exists()
    assert leftovers(tmp_path) == []


def test_fault_mid_export_leaves_nothing(capsys, folder, tmp_path, monkeypatch):
    from bertship.exporter import package

    def broken(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(package, "write_manifest", broken)
    code, err = run(capsys, "export", folder, "--out", tmp_path / "out")
    assert code == 1 and "disk full" in err
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_fault_during_forced_replace_keeps_the_old_artifact(capsys, folder, tmp_path, monkeypatch):
    from bertship.exporter import package

    out = tmp_path / "out"
    assert run(capsys, "export", folder, "--out", out, "--backends", "onnxruntime")[0] == 0
    before = (out / "manifest.json").read_text()
    monkeypatch.setattr(package, "write_golden", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("injected")))
    assert run(capsys, "export", folder, "--out", out, "--force")[0] == 1
    assert (out / "manifest.json").read_text() == before
    assert leftovers(tmp_path) == []


def test_fidelity_failure_lists_every_output_and_writes_nothing(capsys, tmp_path, tiny_folder, monkeypatch):
    from dataclasses import replace

    from bertship.exporter import families
    from bertship.runtimes.fidelity import Tolerance

    strict = replace(families.FAMILIES["bert"], tolerance=Tolerance(max_abs_diff=0.0, min_cosine=1.0))
    monkeypatch.setitem(families.FAMILIES, "bert", strict)
    src = tiny_folder("bert", "question-answering")
    code, err = run(capsys, "export", src, "--out", tmp_path / "out")
    assert code == 4
    for needle in ("onnxruntime: start_logits", "onnxruntime: end_logits", "openvino: start_logits", "openvino: end_logits"):
        assert needle in err
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


@pytest.fixture
def damaged(tiny_artifact, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


def test_tampered_file_refused(capsys, damaged):
    onnx = damaged / "onnxruntime" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    code, err = run(capsys, "verify", damaged)
    assert code == 5
    assert_one_line_error(err, "onnxruntime/model.onnx was changed")
    from bertship.runtimes import ArtifactError, load

    with pytest.raises(ArtifactError, match="changed"):
        load(damaged, backend="onnxruntime")
    assert load(damaged, backend="openvino").backend == "openvino"  # the untouched backend still loads


def test_truncated_and_missing_files(capsys, damaged):
    xml = damaged / "openvino" / "model.bin"
    xml.write_bytes(xml.read_bytes()[:100])
    (damaged / "tokenizer.json").unlink()
    code, err = run(capsys, "verify", damaged)
    assert code == 5
    assert_one_line_error(err, "openvino/model.bin has 100 bytes", "tokenizer.json is missing")


def test_newer_format_version(capsys, damaged):
    path = damaged / artifact.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = artifact.FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    for command in ("verify", "inspect"):
        code, err = run(capsys, command, damaged)
        assert code == 5
        assert_one_line_error(err, "newer bertship", "upgrade")


def test_not_an_artifact(capsys, tmp_path):
    code, err = run(capsys, "verify", tmp_path)
    assert code == 5
    assert_one_line_error(err, "manifest.json")


def test_backend_missing_from_artifact(capsys, damaged):
    from bertship.runtimes import UsageError, load

    manifest = json.loads((damaged / artifact.MANIFEST).read_text())
    del manifest["backends"]["openvino"]
    (damaged / artifact.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="no 'openvino' model"):
        load(damaged, backend="openvino")
    code, err = run(capsys, "verify", damaged, "--backends", "openvino")
    assert code == 2


def test_help_documents_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in range(0, 7):
        assert f"  {code}  " in out


def test_model_path_that_is_a_file(capsys, folder, tmp_path):
    code, err = run(capsys, "export", folder / "config.json", "--out", tmp_path / "out")
    assert code == 3
    assert_one_line_error(err, "is a file, not a model folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_export_threads_must_be_positive(capsys, folder, tmp_path, threads):
    code, err = run(capsys, "export", folder, "--threads", threads, "--out", tmp_path / "out")
    assert code == 2
    assert_one_line_error(err, f"--threads {threads}")
    assert not (tmp_path / "out").exists()


def test_unwritable_out_is_its_own_exit_code(capsys, folder, tmp_path):
    from bertship.runtimes.errors import EXIT_CODES, DestinationError

    code, err = run(capsys, "export", folder, "--out", "/proc/bertship-test/out")
    assert code == DestinationError.exit_code == 11 and 11 in EXIT_CODES
    assert_one_line_error(err, "cannot write into", "/proc")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run(capsys, "export", folder, "--out", blocker / "out")
    assert code == 11
    assert_one_line_error(err, "is a file")
    art_code, art_err = run(capsys, "deploy", "ovms", tmp_path / "missing-art", "--out", "/proc/x")
    assert art_code in (5, 11)  # the artifact is checked first; either way a named error, not a crash
    assert "internal error" not in art_err
