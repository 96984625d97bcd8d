"""`bertship deploy`: Triton repositories checked against Triton's own config schema, the generated Python-backend
tokenizer run against the runtime tokenizer, the OVMS layout compiled with its plugin_config, atomic publishing.

No Triton or OVMS server runs here: the configs are parsed with tritonclient's ModelConfig protobuf, the tokenizer
model is imported with a stand-in `triton_python_backend_utils`, and the encoder files are run with the runtimes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bertship.cli import main
from bertship.runtimes import UsageError, artifact, deploy, load

try:  # Triton's own config schema: only the tests that parse config.pbtxt need it (the `deploy` extra)
    import tritonclient.grpc.model_config_pb2 as mc
    from google.protobuf import json_format, text_format  # protobuf comes with tritonclient[grpc]
except ImportError:
    mc = None

needs_schema = pytest.mark.skipif(mc is None, reason="parsing config.pbtxt needs Triton's schema: "
                                                     "pip install 'bertship[deploy]'")

TEXTS = ["hello world", "", "naïve café — ünïcode", "word " * 100, "x"]


def parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def dtype_name(value: int) -> str:
    return mc.DataType.Name(value)


@needs_schema
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("task", ["sequence-classification", "question-answering", "sentence-embedding"])
def test_triton_configs_match_the_artifact(task_artifact, tmp_path, backend, task):
    art = task_artifact(task)
    manifest = artifact.read_manifest(art)
    record = deploy.triton(art, tmp_path / "repo", backend=backend, max_batch=8, instances=2, threads=3, name="enc")
    repo = tmp_path / "repo"
    assert record["models"] == ["enc", "enc_tokenizer", "enc_ensemble"]
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(record["models"])

    enc = parse(repo / "enc")
    assert enc.name == "enc" and enc.backend == backend and enc.max_batch_size == 8
    sig_in, sig_out = manifest["signature"]["inputs"], manifest["signature"]["outputs"]
    assert [(i.name, dtype_name(i.data_type), list(i.dims)) for i in enc.input] == \
        [(i["name"], "TYPE_INT64", [-1]) for i in sig_in]
    model = load(art, backend=backend)
    ran = model.run(model.tokenizer(["two texts", "of different lengths here"]))
    for out, spec in zip(enc.output, sig_out):
        assert out.name == spec["name"] and dtype_name(out.data_type) == "TYPE_FP32"
        # The batch axis is Triton's; a sequence axis is dynamic; every other axis is its real size.
        expected = [-1 if axis == "sequence" else n for axis, n in zip(spec["axes"][1:], ran[out.name].shape[1:])]
        assert list(out.dims) == expected
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in enc.instance_group] == [(2, "KIND_CPU")]
    assert enc.HasField("dynamic_batching")
    params = {k: v.string_value for k, v in enc.parameters.items()}
    assert params == ({"intra_op_thread_count": "3", "inter_op_thread_count": "1"} if backend == "onnxruntime"
                      else {"INFERENCE_NUM_THREADS": "3", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"})
    files = {"onnxruntime": ["model.onnx"], "openvino": ["model.bin", "model.xml"]}[backend]
    assert sorted(p.name for p in (repo / "enc" / "1").iterdir()) == files
    for rel in manifest["backends"][backend]["files"]:
        copied = repo / "enc" / "1" / ("model" + Path(rel).suffix)
        assert artifact.sha256_file(copied) == artifact.sha256_file(art / rel)

    tok = parse(repo / "enc_tokenizer")
    texts = ["TEXT", "TEXT_PAIR"] if task == "question-answering" else ["TEXT"]
    assert tok.backend == "python" and [(i.name, dtype_name(i.data_type), list(i.dims)) for i in tok.input] == \
        [(t, "TYPE_STRING", [1]) for t in texts]
    assert [(o.name, dtype_name(o.data_type)) for o in tok.output] == [(i["name"], "TYPE_INT64") for i in sig_in]

    ens = parse(repo / "enc_ensemble")
    assert ens.platform == "ensemble" and [i.name for i in ens.input] == texts
    assert [(o.name, list(o.dims)) for o in ens.output] == [(o.name, list(o.dims)) for o in enc.output]
    configs = {"enc": enc, "enc_tokenizer": tok}
    available = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:  # every tensor a step reads was sent or made by an earlier step
        target = configs[step.model_name]
        assert set(step.input_map) == {i.name for i in target.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) <= {o.name for o in target.output}
        available |= set(step.output_map.values())
    assert {o.name for o in ens.output} <= available
    if backend == "openvino":
        assert record["notes"] and "bf16" in record["notes"][0]


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class TritonError(Exception):
        pass

    class Request:
        def __init__(self, **tensors):
            self.tensors = {k: Tensor(k, v) for k, v in tensors.items()}

    pb.Tensor, pb.InferenceResponse, pb.TritonError, pb.Request = Tensor, InferenceResponse, TritonError, Request
    pb.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    return pb


def _tokenizer_model(repo: Path, name: str, monkeypatch):
    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    folder = repo / f"{name}_tokenizer"
    spec = importlib.util.spec_from_file_location("generated_tokenizer_model", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    # Triton hands initialize() the config as JSON with proto field names: the same conversion as here.
    config = json_format.MessageToJson(parse(folder), preserving_proto_field_name=True)
    instance.initialize({"model_config": config, "model_repository": str(folder), "model_version": "1",
                         "model_name": folder.name})
    return instance, pb


def _as_bytes(texts):
    return np.array([[t.encode("utf-8")] for t in texts], dtype=object)


@needs_schema
@pytest.mark.parametrize("task", ["sequence-classification", "question-answering"])
def test_generated_tokenizer_model_gives_the_runtime_tokenizers_ids(task_artifact, tmp_path, monkeypatch, task):
    art = task_artifact(task)
    deploy.triton(art, tmp_path / "repo", name="enc")
    model, pb = _tokenizer_model(tmp_path / "repo", "enc", monkeypatch)
    runtime = load(art)
    pairs = TEXTS[::-1] if task == "question-answering" else None
    feeds = {"TEXT": _as_bytes(TEXTS)} | ({"TEXT_PAIR": _as_bytes(pairs)} if pairs else {})
    bad = {"TEXT": np.array([[b"\xff\xfe not utf-8"]], dtype=object)} | (
        {"TEXT_PAIR": _as_bytes(["ok"])} if pairs else {})
    good, refused, again = model.execute([pb.Request(**feeds), pb.Request(**bad), pb.Request(**feeds)])
    assert good.error is None and again.error is None
    got = {t.name: t.as_numpy() for t in good.output_tensors}
    expected = runtime.tokenizer(TEXTS, pairs)
    assert list(got) == list(expected) == list(runtime.input_names)
    for name in expected:
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], expected[name])
    assert "TEXT[0] is not UTF-8" in str(refused.error) and refused.output_tensors == []
    # What the encoder then computes from these ids is what the runtime computes from the texts.
    out = runtime.run(got)
    ref = runtime.encode(TEXTS, pairs=pairs)
    for name in runtime.output_names:
        np.testing.assert_allclose(out[name], ref[name] if isinstance(ref, dict) else ref, atol=1e-5)


def test_ovms_layout_compiles_with_its_plugin_config(task_artifact, tmp_path):
    import openvino as ov

    art = task_artifact("sequence-classification")
    record = deploy.ovms(art, tmp_path / "ovms", name="cls", threads=1)
    config = json.loads((tmp_path / "ovms" / "config.json").read_text())
    entry = config["model_config_list"][0]["config"]
    assert entry["name"] == "cls" and entry["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    version = tmp_path / "ovms" / entry["base_path"] / "1"  # relative to config.json
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.xml"]
    assert (tmp_path / "ovms" / "tokenizer.json").read_bytes() == (art / "tokenizer.json").read_bytes()
    plugin = {k: v for k, v in entry["plugin_config"].items()}
    compiled = ov.Core().compile_model(str(version / "model.xml"), "CPU", plugin)  # unknown keys would raise
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    runtime = load(art, backend="openvino")
    feeds = runtime.tokenizer(["a short text", "and a somewhat longer one"])
    got = compiled.create_infer_request().infer(feeds)[compiled.output("logits")]
    np.testing.assert_allclose(got, runtime.run(feeds)["logits"], atol=1e-6)
    assert record["target"] == "ovms" and record["task"] == "sequence-classification"


def test_existing_out_is_refused_and_force_replaces_atomically(tiny_artifact, tmp_path, monkeypatch):
    out = tmp_path / "repo"
    deploy.triton(tiny_artifact, out, name="first")
    with pytest.raises(UsageError, match="already exists — pass --force"):
        deploy.triton(tiny_artifact, out, name="second")

    def broken_copy(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(deploy.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        deploy.triton(tiny_artifact, out, name="second", force=True)
    monkeypatch.undo()
    assert (out / "first" / "config.pbtxt").is_file()  # the old repository is intact
    deploy.triton(tiny_artifact, out, name="second", force=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["second", "second_ensemble", "second_tokenizer"]
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".replaced-" in p.name] == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("not a deployment")
    with pytest.raises(UsageError, match="not written by `bertship deploy`"):
        deploy.ovms(tiny_artifact, tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "keep.txt").is_file()


@needs_schema
def test_cli_deploy_and_its_errors(tiny_artifact, tmp_path, capsys):
    assert main(["deploy", "triton", str(tiny_artifact), "--out", str(tmp_path / "t"), "--backend", "openvino",
                 "--max-batch", "4", "--instances", "2", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "bf16" in captured.err  # the OpenVINO-in-Triton precision caveat is said
    assert parse(tmp_path / "t" / tiny_artifact.name).max_batch_size == 4  # named after the artifact folder
    assert main(["deploy", "ovms", str(tiny_artifact), "--out", str(tmp_path / "o")]) == 0
    for argv, code, needle in [
        (["triton", str(tiny_artifact), "--out", str(tmp_path / "t")], 2, "already exists"),
        (["triton", str(tiny_artifact), "--out", str(tmp_path / "x"), "--max-batch", "0"], 2, "--max-batch"),
        (["triton", str(tiny_artifact), "--out", str(tmp_path / "x"), "--backend", "tensorrt"], 2, "tensorrt"),
        (["triton", str(tiny_artifact), "--out", str(tmp_path / "x"), "--name", "a/b"], 2, "model name"),
        (["ovms", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], 5, "does not exist"),
    ]:
        assert main(["deploy", *argv]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bertship: error:") and needle in err[0] and " — " in err[0]
    assert not (tmp_path / "x").exists()


def test_deploy_refuses_a_changed_artifact(tiny_artifact, tmp_path, capsys):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    with open(copy / "onnxruntime" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    assert main(["deploy", "triton", str(copy), "--out", str(tmp_path / "t")]) == 5
    assert "checksums" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_deploy_imports_no_torch_or_triton(tiny_artifact, tmp_path):
    code = (
        "import sys\nfrom bertship.cli import main\n"
        f"assert main(['deploy', 'triton', {str(tiny_artifact)!r}, '--out', {str(tmp_path / 't')!r}]) == 0\n"
        f"assert main(['deploy', 'ovms', {str(tiny_artifact)!r}, '--out', {str(tmp_path / 'o')!r}]) == 0\n"
        "heavy = {'torch', 'transformers', 'onnx', 'tritonclient'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@needs_schema
@pytest.mark.parametrize("task", ["sequence-classification", "question-answering", "rerank", "multi-vector"])
def test_python_backend_layout_carries_the_runtime_and_the_artifact(task_artifact, tmp_path, task):
    art = task_artifact(task)
    record = deploy.triton(art, tmp_path / "repo", backend="python", name="enc", runtime="openvino", threads=2,
                           truncation="error", bucket_size=4)
    assert record["models"] == ["enc"] and record["runtime"] == "openvino"
    config = parse(tmp_path / "repo" / "enc")
    assert config.backend == "python" and config.HasField("dynamic_batching")
    pairs = task in ("question-answering", "rerank")
    texts = ["TEXT", "TEXT_PAIR"] if pairs else ["TEXT"]
    assert [(i.name, dtype_name(i.data_type), list(i.dims)) for i in config.input] == \
        [(t, "TYPE_STRING", [1]) for t in texts]
    labels = load(art).encode(["a"]).shape[-1] if task == "sequence-classification" else None
    width = load(art).embed_multi(["a"])[0].shape[1] if task == "multi-vector" else None
    expected = {"sequence-classification": [("LOGITS", "TYPE_FP32", [labels]), ("LABEL", "TYPE_STRING", [1]),
                                            ("SCORE", "TYPE_FP32", [1])],
                "question-answering": [("ANSWER", "TYPE_STRING", [1]), ("SCORE", "TYPE_FP32", [1]),
                                       ("START", "TYPE_INT64", [1]), ("END", "TYPE_INT64", [1])],
                "rerank": [("SCORE", "TYPE_FP32", [1])],
                "multi-vector": [("TOKEN_EMBEDDINGS", "TYPE_FP32", [-1, width]),
                                 ("TOKENS", "TYPE_INT64", [1])]}[task]
    assert [(o.name, dtype_name(o.data_type), list(o.dims)) for o in config.output] == expected
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"runtime": "openvino", "threads": "2", "truncation": "error", "bucket_size": "4",
                      "text_pairs": "true" if pairs else "false", "tune_batching": "true"}
    # two instances by default (one's Python overlaps the other's model run), taking what is queued at once
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, config.instance_group[0].KIND_CPU)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    version = tmp_path / "repo" / "enc" / "1"
    copied = load(version / "artifact", backend="openvino")  # checksums of the copied files hold
    assert not (version / "artifact" / "onnxruntime").exists() and not (version / "artifact" / "golden.npz").exists()
    assert (version / "bertship" / "runtimes" / "model.py").read_bytes() == \
        (Path(deploy.__file__).parent / "model.py").read_bytes()
    assert (version / "model.py").read_bytes() == (Path(deploy.__file__).parent / "triton_model.py").read_bytes()
    assert copied.task == task
    with pytest.raises(UsageError, match="--runtime is for --backend python"):
        deploy.triton(art, tmp_path / "x", runtime="openvino")
    with pytest.raises(UsageError, match="unknown truncation"):
        deploy.triton(art, tmp_path / "x", backend="python", truncation="cut")
    with pytest.raises(UsageError, match="--queue-delay-us must be 0 or more"):
        deploy.triton(art, tmp_path / "x", backend="python", queue_delay_us=-5)
    deploy.triton(art, tmp_path / "slow", backend="python", name="enc", instances=1, queue_delay_us=1500,
                  tune_batching=False)
    config = parse(tmp_path / "slow" / "enc")
    assert config.dynamic_batching.max_queue_delay_microseconds == 1500 and config.instance_group[0].count == 1
    assert config.parameters["tune_batching"].string_value == "false"
