"""Export stage: the PyTorch model (with the task's pooling, if any) becomes one ONNX graph with dynamic axes."""

from __future__ import annotations

import importlib
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import onnxio
from .load import Source

OPSET = 17


def graph_module(source: Source):
    """The torch.nn.Module that is exported and that produces the reference outputs: model + task outputs
    (heads.task_outputs: pooling, Dense, normalization, score activation, SPLADE pooling)."""
    import torch

    from .heads import task_outputs

    class ExportGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = source.model
            self.dense = torch.nn.ModuleList(source.dense)
            self.exits = source.exits
            self.tokens = source.tokens

        def forward(self, *args):
            feeds = dict(zip(source.family.inputs, args))
            if self.tokens is not None and self.exits is not None:  # both: off-ramps read the kept tokens' states
                h, _, kept = self.tokens.encode_states(**feeds)
                layers = self.exits.layers
                states, masks = {k: kept[k][0] for k in layers}, {k: kept[k][1] for k in layers}
                return (self.tokens.logits(h), *self.exits(states, masks),
                        *(t for k in layers for t in (states[k], masks[k])))  # in cut_points' order
            if self.tokens is not None:  # token elimination: the task's output from the kept tokens
                from .heads import pool
                from .tokens import task_value

                return task_value(source, self.tokens, feeds, pool)
            if self.exits is not None:  # early exit: the final logits, each off-ramp's, then the hidden states to cut at
                out = self.model(**feeds, return_dict=True, output_hidden_states=True)
                return (out.logits, *self.exits(out.hidden_states, feeds["attention_mask"]),
                        *(out.hidden_states[layer] for layer in self.exits.layers))
            return task_outputs(source, self.dense, self.model(**feeds, return_dict=True), feeds)

    return ExportGraph().eval()


def cut_points(source: Source) -> list[str]:
    """The outputs an early-exit graph is cut at into segments (exporter.segments): the hidden states after each
    off-ramp's layer, and under a token schedule also the mask of the tokens kept there; none without off-ramps."""
    if source.exits is None:
        return []
    from .segments import carried

    return [name for layer in source.exits.layers for name in carried(layer, source.tokens is not None)]


@contextmanager
def traced_as_python(modules: tuple[str, ...]):
    """While tracing, the @torch.jit.script functions of `modules` are their Python originals (torch keeps each one as
    `_torchdynamo_inline`): traced, a branch on shapes resolves to the path the model takes (self-attention: query and
    key lengths are equal), and sizes stay dynamic; scripted, it would export as an If of dynamic rank."""
    import torch

    swapped = []
    try:
        for name in modules:
            module = importlib.import_module(name)
            for attr, obj in list(vars(module).items()):
                original = getattr(obj, "_torchdynamo_inline", None)
                if isinstance(obj, torch.jit.ScriptFunction) and callable(original):
                    swapped.append((module, attr, obj))
                    setattr(module, attr, original)
        yield
    finally:
        for module, attr, obj in swapped:
            setattr(module, attr, obj)


def to_onnx(source: Source, feeds: dict[str, np.ndarray], path: Path, external_data: str = "auto") -> Path:
    """Trace the graph module on sample feeds and write an ONNX file whose batch and sequence axes are dynamic. Past
    2 GB torch writes one file per tensor beside it; those become one `<path>.data` (onnxio.settle)."""
    import onnx
    import torch

    module = graph_module(source)
    args = tuple(torch.from_numpy(feeds[name]) for name in source.family.inputs)
    output_names = [o.name for o in source.task.outputs]
    axes = {name: {0: "batch", 1: "sequence"} for name in source.family.inputs}
    for o in source.task.outputs:
        axes[o.name] = {i: a for i, a in enumerate(o.axes) if a in ("batch", "sequence")}
    for name in cut_points(source):  # graph outputs too, so every later stage keeps them by name
        output_names.append(name)
        # under a token schedule a cut point is as wide as the tokens kept there, not the input
        axes[name] = {0: "batch", 1: "sequence" if source.tokens is None else f"{name}_tokens"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), traced_as_python(source.family.script_modules):
        # The TorchScript exporter announces its own deprecation and traces Python branches on shapes; both are
        # expected here, and parity is checked afterwards on other batch and sequence sizes.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module, args, str(path),
                input_names=list(source.family.inputs), output_names=output_names, dynamic_axes=axes,
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
    onnx.checker.check_model(str(path))
    return onnxio.settle(path, external_data)
