"""Import of quantization-aware-trained models: fake-quantize modules become Q/DQ pairs with their learned scales.

torch.ao's QAT modules cannot be exported as they are: the default x86 qconfig uses a fused fake-quant op that no
ONNX exporter supports, and every FakeQuantize reads observer flags that defeat tracing. Each trained FakeQuantize is
replaced by a module with frozen scale/zero-point buffers calling torch.fake_quantize_per_{tensor,channel}_affine,
which the exporter writes as QuantizeLinear/DequantizeLinear with those exact scales (outputs are unchanged).
"""

from __future__ import annotations

from typing import Any


def fake_quant_modules(model) -> list[tuple[str, Any]]:
    """(name, module) of every torch.ao fake-quantize module in the model."""
    from torch.ao.quantization import FakeQuantizeBase

    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase)]


def freeze(model) -> dict[str, Any]:
    """Replace each FakeQuantize in place by a frozen equivalent; return what was frozen, for the manifest."""
    import torch

    class FrozenFakeQuantize(torch.nn.Module):
        """Fake quantization with fixed, learned parameters: exports as one QuantizeLinear + DequantizeLinear."""

        def __init__(self, fq):
            super().__init__()
            scale, zero_point = fq.calculate_qparams()
            self.register_buffer("scale", scale.detach().float().clone())
            self.register_buffer("zero_point", zero_point.detach().to(torch.int32).clone())
            self.quant_min, self.quant_max = int(fq.quant_min), int(fq.quant_max)
            self.axis = int(fq.ch_axis) if self.scale.numel() > 1 else None

        def forward(self, x):
            if self.axis is None:
                return torch.fake_quantize_per_tensor_affine(
                    x, float(self.scale), int(self.zero_point), self.quant_min, self.quant_max)
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.axis, self.quant_min, self.quant_max)

    found = fake_quant_modules(model)
    per_channel = 0
    for name, fq in found:
        if not bool(fq.fake_quant_enabled[0]):
            continue  # disabled fake quantization is an identity: leave it, it exports as nothing
        frozen = FrozenFakeQuantize(fq)
        per_channel += frozen.axis is not None
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, frozen)
    return {"fake_quantize_modules": len(found), "per_channel": per_channel, "per_tensor": len(found) - per_channel}
