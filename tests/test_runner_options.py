"""Runner options: the ONNX Runtime graph transformers bertship turns off on CPU (and the override), OpenVINO's sparse
int8 weights."""

from __future__ import annotations

import pytest

from bertship.runtimes import load
from bertship.runtimes.errors import UsageError
from bertship.runtimes.ort_runner import CPU_DISABLED_OPTIMIZERS, disabled_optimizers

pytestmark = pytest.mark.xdist_group("int8-artifact")  # its module fixtures are made on one xdist worker


def _optimized_ops(art, tmp_path, name, **options) -> set[str]:
    import onnx

    path = tmp_path / f"{name}.onnx"
    load(art, backend="onnxruntime", runner_options={"optimized_model_path": str(path), **options})
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def int8_artifact(tiny_folder, tmp_path_factory):
    from bertship.exporter import export

    return export(tiny_folder("bert", "feature-extraction"), out=tmp_path_factory.mktemp("int8") / "a",
                  recipe="int8-dynamic", backends="onnxruntime", log=lambda _: None)


def test_cpu_sessions_keep_add_and_layernorm_apart(int8_artifact, tmp_path):
    # ORT's own default fuses the int8 graph's residual Add + LayerNormalization into SkipLayerNormalization ...
    assert "SkipLayerNormalization" in _optimized_ops(int8_artifact, tmp_path, "ort-default", disabled_optimizers=[])
    # ... whose CPU kernel is slower than the two ops it replaces (bench/results/sparsity.md): bertship's default
    ops = _optimized_ops(int8_artifact, tmp_path, "bertship")
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    model = load(int8_artifact, backend="onnxruntime")
    assert model.runner.disabled_optimizers == CPU_DISABLED_OPTIMIZERS


def test_both_settings_give_the_same_outputs(int8_artifact, tiny_artifact):
    """Keeping Add and LayerNormalization apart changes float round-off only: equal within 1e-4 on the fp32 graph. On
    the int8-dynamic graph that round-off feeds a per-batch activation quantizer, where a value on a rounding boundary
    can move one int8 step (CI saw one such value in ~1,700): there every token's vector must keep cosine ≥ 0.9999,
    which a changed computation would not."""
    import numpy as np

    texts = ["a short test", "a somewhat longer sentence for the second row"]
    fp32 = [load(tiny_artifact, backend="onnxruntime", runner_options=o).run(load(tiny_artifact).tokenizer(texts))
            for o in (None, {"disabled_optimizers": []})]
    for name in fp32[0]:
        assert np.allclose(fp32[0][name], fp32[1][name], atol=1e-4)
    ours = load(int8_artifact, backend="onnxruntime").encode(texts)
    stock = load(int8_artifact, backend="onnxruntime", runner_options={"disabled_optimizers": []}).encode(texts)
    a, b = ours.reshape(-1, ours.shape[-1]), stock.reshape(-1, stock.shape[-1])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999


def test_gpu_sessions_and_explicit_lists():
    assert disabled_optimizers(["CPUExecutionProvider"], None) == CPU_DISABLED_OPTIMIZERS
    assert disabled_optimizers([("CUDAExecutionProvider", {}), "CPUExecutionProvider"], None) == ()
    assert disabled_optimizers(["CPUExecutionProvider"], []) == ()
    assert disabled_optimizers(["CPUExecutionProvider"], ["AttentionFusion"]) == ("AttentionFusion",)
    with pytest.raises(UsageError, match="list of ONNX Runtime optimizer names"):
        disabled_optimizers(["CPUExecutionProvider"], "SkipLayerNormFusion")


def test_openvino_sparse_weights_option(tiny_artifact):
    import numpy as np

    texts = ["a short test", "another one"]
    plain = load(tiny_artifact, backend="openvino").encode(texts)
    sparse = load(tiny_artifact, backend="openvino", runner_options={"sparse_weights_decompression_rate": 0.5})
    assert sparse.runner.compiled.get_property("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE") == 0.5
    assert np.allclose(sparse.encode(texts), plain, atol=1e-5)
    for bad in (0, 1.5, "half", True):
        with pytest.raises(UsageError, match="sparse_weights_decompression_rate must be a number in"):
            load(tiny_artifact, backend="openvino", runner_options={"sparse_weights_decompression_rate": bad})


def _has_amx() -> bool:
    from bertship.profiles import cpu_info

    return "amx_int8" in cpu_info()["flags"]


@pytest.mark.skipif(not _has_amx(), reason="OpenVINO's sparse int8 weight kernels exist only on CPUs with AMX")
def test_openvino_sparse_weights_engage_on_amx(tiny_folder, tmp_path):
    import transformers as tf

    from bertship.exporter import export
    from bertship.exporter.prune import zero_smallest
    from bertship.exporter.sparsity import load_tokenizer

    src = tiny_folder("bert", "feature-extraction")
    # the CPU plugin picks AMX kernels only for layers of a realistic size: hidden 256, FFN 1024, one layer
    config = tf.BertConfig(hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=1024,
                           vocab_size=tf.AutoConfig.from_pretrained(src).vocab_size, max_position_embeddings=64)
    model = zero_smallest(tf.BertModel(config).eval(), 0.8)
    art = export(model, load_tokenizer(src), task="feature-extraction", out=tmp_path / "a", recipe="int8-static",
                 backends="openvino", log=lambda _: None)
    for options, kernel in (({}, "brgemm_avx512_amx_I8"),
                            ({"sparse_weights_decompression_rate": 0.5}, "brgemm_avx512_amx_sparse_I8")):
        m = load(art, backend="openvino", runner_options={"profile": True, **options})
        m.encode(["a short test"])
        assert m.runner.kernels()["FullyConnected"] == [kernel]


def test_cuda_keeps_fp32_math_for_fp32_artifacts():
    from bertship.runtimes.ort_runner import session_providers

    cuda = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert session_providers(cuda, "fp32") == [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": "0"}),
                                               ("CPUExecutionProvider", {})]
    assert session_providers(cuda, "fp16")[0] == ("CUDAExecutionProvider", {"device_id": 0})  # not an fp32 artifact
    asked = [("CUDAExecutionProvider", {"use_tf32": "1"})]
    assert session_providers(asked, "fp32") == asked  # an explicit choice stands
    assert cuda[0][1] == {"device_id": 0}  # the caller's options are not changed


def test_export_threads_limit_the_pytorch_reference_passes(tiny_folder, tmp_path, monkeypatch):
    """--threads holds for PyTorch's golden and sweep references too (restored afterwards): on a busy machine PyTorch's
    one-thread-per-core default made a base-size export's reference passes 50x slower."""
    import torch

    from bertship.exporter import export, golden

    seen = []
    original = golden.reference_outputs

    def spy(source, feeds):
        seen.append(torch.get_num_threads())
        return original(source, feeds)

    monkeypatch.setattr(golden, "reference_outputs", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1 already (as on an xdist worker), so the export's own setting is what is seen
    try:
        export(tiny_folder("bert", "feature-extraction"), out=tmp_path / "a", backends="onnxruntime", threads=1,
               log=lambda _: None)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
