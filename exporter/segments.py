"""Cut an early-exit model, as built for a backend under its recipe, into one graph per segment.

The exported graph of an early-exit classifier (exporter.exits) has, besides `logits`, each off-ramp's logits
(`exit{L}_logits`) and the hidden states after that layer (`exit{L}_hidden`) as outputs; under a token schedule
(exporter.tokens) also the mask of the tokens kept after that layer (`exit{L}_mask`), which the next segment takes
with the hidden states. Every recipe builds that
one graph as it builds any other (fusions, int8 by ONNX Runtime's quantizer or NNCF), and only then is it cut at the
`exit{L}_hidden` tensors, so each segment carries exactly the built model's nodes and quantization parameters:
- ONNX Runtime: onnx.utils.Extractor (ONNX's own sub-model extraction) between named tensors;
- OpenVINO: the hidden tensor's consumers are re-pointed at a new Parameter and an ov.Model is built from the results
  the segment needs (OpenVINO cannot convert a cut of an IR, only of a source model).
Each segment also takes whichever original inputs its nodes read (attention_mask for the mask of every layer, and
input_ids where a shape is taken from it); the runtime feeds them cut to the texts still running
(runtimes.exits.SegmentRunner). Under a token schedule OpenVINO's IR takes the shape of a gathered tensor from TopK's
indices of the layer before the cut; those ShapeOf nodes are re-pointed at the handed-over tensor of the same shape, so
that a segment does not recompute every layer before it for a size (tested: one TopK per segment, no input_ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import onnxio


def carried(layer: int, masks: bool) -> list[str]:
    """What a segment ending after `layer` hands to the next: its hidden states, and under a token schedule the mask
    of the tokens kept there (the next layers attend and eliminate by it)."""
    return [f"exit{layer}_hidden"] + ([f"exit{layer}_mask"] if masks else [])


def plan(layers: Sequence[int], masks: bool = False) -> list[dict[str, Any]]:
    """Per segment: the layer it ends after (None: the last, the model's own classifier), the state it takes and the
    state and logits it outputs (`mask_in`/`mask_out` only under a token schedule)."""
    out = []
    for k in range(len(layers) + 1):
        last = k == len(layers)
        seg = {"layer": None if last else layers[k],
               "hidden_in": None if k == 0 else f"exit{layers[k - 1]}_hidden",
               "hidden_out": None if last else f"exit{layers[k]}_hidden",
               "logits": "logits" if last else f"exit{layers[k]}_logits"}
        if masks:
            seg["mask_in"] = None if k == 0 else f"exit{layers[k - 1]}_mask"
            seg["mask_out"] = None if last else f"exit{layers[k]}_mask"
        out.append(seg)
    return out


def _state(seg: dict[str, Any], direction: str) -> list[str]:
    return [seg[key] for key in (f"hidden_{direction}", f"mask_{direction}") if seg.get(key)]


def cut_onnx(path: Path, layers: Sequence[int], inputs: Sequence[str], out_dir: Path, mode: str,
             total: int, masks: bool = False) -> list[dict[str, Any]]:
    """Write segment{k}.onnx files beside nothing else in `out_dir`; their manifest entries (paths relative to it)."""
    import onnx
    import onnx.utils

    model = onnx.load(str(path))
    extractor = onnx.utils.Extractor(model)
    segments = []
    for k, seg in enumerate(plan(layers, masks)):
        outs = [seg["logits"]] + _state(seg, "out")
        ins = _state(seg, "in") + list(inputs)
        sub = extractor.extract_model(ins, outs)
        read = {name for node in sub.graph.node for name in node.input}
        unused = [i for i in sub.graph.input if i.name not in read]
        for i in unused:
            sub.graph.input.remove(i)
        missing = [name for name in _state(seg, "in") if name not in read]
        if missing:
            raise RuntimeError(f"segment {k} does not read {', '.join(missing)}: the graph cannot be cut there")
        file = out_dir / f"segment{k}.onnx"
        onnxio.save(sub, file, mode)
        segments.append({**seg, "layer": seg["layer"] or total, "model": file.name,
                         "inputs": [i.name for i in sub.graph.input]})
    return segments


def cut_openvino(xml: Path, layers: Sequence[int], out_dir: Path, total: int,
                 masks: bool = False) -> list[dict[str, Any]]:
    """Write segment{k}.xml/.bin in `out_dir`; their manifest entries (paths relative to it)."""
    import openvino as ov

    core = ov.Core()
    segments = []
    for k, seg in enumerate(plan(layers, masks)):
        model = core.read_model(str(xml))
        results = {name: r for r in model.get_results() for name in r.input_value(0).get_names()}
        params: list[Any] = []
        sources = {name: results[name].input_value(0) for name in _state(seg, "in")}
        before = set(_upstream([out.get_node() for out in sources.values()]))  # what the segments before compute
        for name, source in sources.items():  # the state handed over: a new Parameter its consumers read instead
            state = ov.opset13.parameter(source.get_partial_shape(), source.get_element_type(), name=name)
            state.output(0).set_names({name})
            for target in list(source.get_target_inputs()):
                if target.get_node().get_type_name() != "Result":
                    target.replace_source_output(state.output(0))
            params.append(state)
        wanted = [results[name] for name in [seg["logits"]] + _state(seg, "out")]
        if masks and params:
            _reshape_from_state(core, model.get_parameters(), wanted, before, sources, params)
        reached = _parameters(wanted)
        params += [p for p in model.get_parameters() if p.get_name() in reached]
        sub = ov.Model(wanted, params, f"segment{k}")
        file = out_dir / f"segment{k}.xml"
        ov.save_model(sub, str(file), compress_to_fp16=False)
        segments.append({**seg, "layer": seg["layer"] or total, "model": file.name,
                         "inputs": [p.get_friendly_name() for p in params]})
    return segments


def _upstream(nodes: list[Any]) -> dict[str, Any]:
    """`nodes` and every node they depend on, by (unique) name."""
    seen: dict[str, Any] = {}
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.get_name() not in seen:
            seen[node.get_name()] = node
            stack += [value.get_node() for value in node.input_values()]
    return seen


def _reshape_from_state(core: Any, originals: list[Any], wanted: list[Any], before: set[str],
                        sources: dict[str, Any], params: list[Any]) -> None:
    """OpenVINO's conversion rewrites the shape of a gathered tensor as the shape of its indices, so the next layer's
    reshapes read TopK's output of the layer before the cut: left so, a segment would recompute every layer before it
    (from input_ids) just for a shape. Each such ShapeOf is re-pointed at the handed-over tensor whose shape equals
    its input's on probe batches of several sizes and lengths (the kept tokens' mask or hidden states); one without
    such a twin is left as it is (correct, and slower)."""
    import numpy as np
    import openvino as ov

    leaks, seen, stack = [], set(), [r.input_value(0).get_node() for r in wanted]
    while stack:
        node = stack.pop()
        if node.get_name() in seen or node.get_type_name() in ("Parameter", "Constant"):
            continue
        seen.add(node.get_name())
        if node.get_type_name() == "ShapeOf":
            src = node.input_value(0)
            if src.get_node().get_name() in before and src.get_node().get_type_name() not in ("Parameter", "Constant"):
                leaks.append(node)
                continue
        stack += [value.get_node() for value in node.input_values()]
    if not leaks:
        return
    # what the leaks and the handed-over tensors read lies before the cut: a probe model of those nodes alone
    names = list(sources)
    probe_outs = [leak.input_value(0) for leak in leaks] + [sources[n] for n in names]
    inputs = [p for p in originals if p.get_name() in _parameters([o.get_node() for o in probe_outs])]
    compiled = core.compile_model(ov.Model(probe_outs, inputs, "probe"), "CPU")
    rng = np.random.default_rng(0)
    shapes: list[list[tuple[int, ...]]] = [[] for _ in probe_outs]
    for batch, width in ((2, 9), (3, 14), (1, 5)):
        feeds = {}
        for p in inputs:
            name = p.get_friendly_name()
            if name == "attention_mask":
                lengths = rng.integers(2, width + 1, size=batch)
                lengths[0] = width
                value = (np.arange(width)[None, :] < lengths[:, None])
            elif name == "input_ids":
                value = rng.integers(5, 100, size=(batch, width))
            else:
                value = np.zeros((batch, width))
            feeds[name] = value.astype(p.get_element_type().to_dtype())
        got = compiled(feeds)
        for i, out in enumerate(compiled.outputs):
            shapes[i].append(tuple(got[out].shape))
    state_shapes = dict(zip(names, shapes[len(leaks):]))
    by_name = {p.get_friendly_name(): p for p in params}
    for leak, seen_shapes in zip(leaks, shapes):
        twin = next((n for n in names if state_shapes[n] == seen_shapes), None)
        if twin is not None:
            leak.input(0).replace_source_output(by_name[twin].output(0))


def _parameters(results: list[Any]) -> set[str]:
    """The (unique) names of the Parameter nodes the results depend on."""
    return {name for name, node in _upstream(results).items() if node.get_type_name() == "Parameter"}
