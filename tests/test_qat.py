"""Quantization-aware-trained models (torch.ao fake-quantize) export as Q/DQ with their learned scales, and run int8."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertship.exporter import export
from bertship.runtimes import UsageError, verify
from tests import tiny


def qat_model():
    """A tiny BERT classifier prepared for QAT with the default x86 qconfig and trained a few steps."""
    import torch
    import torch.ao.quantization as tq

    model, tok = tiny.build("bert", "sequence-classification", seed=1)
    model.train()
    model.qconfig = tq.get_default_qat_qconfig("x86")  # uses the fused fake-quant op no exporter supports
    model.bert.embeddings.qconfig = None
    tq.prepare_qat(model, inplace=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    enc = tok(["a good film", "a bad film", "the plot is thin", "great acting"], padding=True, return_tensors="pt")
    for _ in range(3):
        model(**enc, labels=torch.tensor([1, 0, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


@pytest.mark.slow
def test_qat_exports_with_learned_scales_and_runs_int8(tmp_path):
    import onnx
    from onnx import numpy_helper

    model, tok = qat_model()
    query_fq = model.bert.encoder.layer[0].attention.self.query.activation_post_process
    learned = float(query_fq.calculate_qparams()[0])
    import torch

    # prepare_qat puts a fake-quantize on every Linear's weight (per channel) and on every quantized module's output
    # (per tensor): count both in the model itself, independently of bertship's own count
    fq = [m for m in model.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    out = export(model, tok, task="sequence-classification", out=tmp_path / "q", recipe="int8-qat",
                 log=lambda _: None)
    verify(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["qat"]["fake_quantize_modules"] == len(fq)
    assert manifest["recipe"]["qat"]["per_channel"] == len(linears)  # one per Linear weight
    ort_build = manifest["backends"]["onnxruntime"]["build"]
    assert sum(ort_build["integer_ops_at_load"].values()) >= 8  # runs as int8 without re-calibration
    graph = onnx.load(str(out / "onnxruntime" / "model.onnx")).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == len(fq)  # one Q/DQ pair per fake-quantize
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
                   and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR})
    scales = [consts[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[1] in consts]
    assert any(s.size == 1 and float(s) == np.float32(learned) for s in scales), "learned scale kept bit-exact"


def test_qat_model_needs_the_qat_recipe_and_vice_versa(tmp_path):
    model, tok = qat_model()
    with pytest.raises(UsageError, match="--recipe int8-qat"):
        export(model, tok, task="sequence-classification", out=tmp_path / "a", log=lambda _: None)
    plain, tok = tiny.build("bert", "sequence-classification")
    with pytest.raises(UsageError, match="fake-quantize modules"):
        export(plain, tok, task="sequence-classification", out=tmp_path / "b", recipe="int8-qat", log=lambda _: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
