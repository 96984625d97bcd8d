"""Graph passes for mixed precision: list a static int8 graph's activation quantizers by group, and remove some.

A static int8 graph quantizes each activation tensor once (ONNX Runtime: a QuantizeLinear/DequantizeLinear pair; NNCF
on OpenVINO: a FakeQuantize) and every consumer reads the quantized tensor. Removing a group's activation quantizer
makes its consumers compute in float on the unquantized tensor; their weights stay int8 on disk (ONNX Runtime folds
the weight DequantizeLinear into a float initializer at load; OpenVINO decompresses int8 weights in the kernel).
Groups are named after the layer and the modules that read the tensor, e.g. "layer 3 output/dense".

A group kept in float also gets back, from the model that was quantized, its ops' float weights (and, on OpenVINO,
the input NNCF's SmoothQuant scaled and the bias its bias correction shifted): with its activation quantizer gone
alone, a group would still compute on SmoothQuant-scaled int8 weights, and rank as if it did not matter.

Both passes return a new model and leave their inputs unchanged; each raises when a named quantizer or op is absent,
so a stale choice cannot silently quantize everything. Editing one all-int8 model is cheap, so int8-mixed measures
every group this way and ships the edited model it measured.
"""

from __future__ import annotations

import re
from typing import Any

_LAYER = re.compile(r"layers?[._/](\d+)/")
# Ops a quantized tensor may pass through on its way to the operator that reads it as int8 (OpenVINO).
_PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert", "Concat", "Split", "VariadicSplit"}


def _label(consumers: list[str]) -> str:
    """'layer 3 attention/self/{key,query,value}' from the readers' node names: the layer, then the modules (a node
    name without its last part) that read the tensor."""
    layers, modules = set(), []
    for name in consumers:
        m = _LAYER.search(name)
        if m:
            layers.add(int(m.group(1)))
        module = name[m.end():] if m else name.strip("/")
        module = module.rsplit("/", 1)[0] if "/" in module else module
        if module not in modules:
            modules.append(module)
    modules.sort()
    heads = {m.rsplit("/", 1)[0] for m in modules if "/" in m}
    if len(modules) > 1 and len(heads) == 1 and all("/" in m for m in modules):
        head = heads.pop()
        joined = f"{head}/{{{','.join(m.rsplit('/', 1)[1] for m in modules)}}}"
    else:
        joined = "+".join(modules)
    where = "embeddings/head" if not layers else " ".join(f"layer {n}" for n in sorted(layers))
    return f"{where} {joined}"


Groups = dict[str, tuple[list[str], list[str]]]  # label -> (activation quantizer names, op names they feed)


def _add(groups: Groups, consumers: list[str], item: str, ops: list[str]) -> None:
    quantizers, names = groups.setdefault(_label(sorted(consumers)), ([], []))
    quantizers.append(item)
    names.extend(op for op in ops if op not in names)


# --- ONNX (QDQ graphs from onnxruntime.quantization.quantize_static) -------------------------------------------------

def onnx_groups(model: Any, op_types: tuple[str, ...] = ("MatMul",)) -> Groups:
    """Activation quantizers of a QDQ model: group label -> (QuantizeLinear node names, the quantized ops next to
    them: those reading the tensor, and the one that wrote it), in graph order."""
    g = model.graph
    weights = {i.name for i in g.initializer}
    readers: dict[str, list[Any]] = {}
    writer: dict[str, Any] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            writer[name] = node
    groups: Groups = {}
    for node in g.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in weights:
            continue
        consumers = [c for dq in readers.get(node.output[0], []) if dq.op_type == "DequantizeLinear"
                     for c in readers.get(dq.output[0], [])]
        if consumers:
            source = writer.get(node.input[0])
            ops = [c.name for c in consumers if c.op_type in op_types]
            if source is not None and source.op_type in op_types:
                ops.append(source.name)
            _add(groups, [c.name for c in consumers], node.name, ops)
    return groups


def onnx_float_ops(model: Any, float_model: Any, quantizers: list[str] | tuple[str, ...],
                   ops: list[str] | tuple[str, ...] = ()) -> Any:
    """A copy of the QDQ model where the named activation QuantizeLinear nodes (and their DequantizeLinear) are gone,
    every reader of the dequantized tensor reading the float tensor instead, and the named ops read their float
    weights again (taken from `float_model`, the graph that was quantized): those ops compute exactly as in float."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    by_name = {n.name: n for n in g.node}
    missing = [q for q in quantizers if q not in by_name or by_name[q].op_type != "QuantizeLinear"]
    missing += [o for o in ops if o not in by_name]
    if missing:
        raise RuntimeError(f"quantizers or ops to keep in float are not in the graph: {missing[:3]}")
    rename: dict[str, str] = {}
    drop: set[str] = set()
    for q in (by_name[name] for name in quantizers):
        drop.add(q.name)
        for dq in g.node:
            if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                rename[dq.output[0]] = q.input[0]
                drop.add(dq.name)
    outputs = {o.name for o in g.output}
    for dq in g.node:  # a graph output keeps its name (an early-exit graph's cut points): its DequantizeLinear, in
        if dq.op_type == "DequantizeLinear" and dq.output[0] in outputs and dq.output[0] in rename:  # place, becomes
            source = rename.pop(dq.output[0])  # an Identity of the float tensor
            dq.op_type = "Identity"
            del dq.input[:]
            dq.input.append(source)
            del dq.attribute[:]
            drop.discard(dq.name)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # weights: DequantizeLinear(int8 initializer) -> the float initializer the same op read before quantization
    initializers = {i.name for i in g.initializer}
    writer = {o: n for n in g.node for o in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    for name in ops:
        node, original = by_name[name], float_nodes.get(name)
        for i, inp in enumerate(node.input):
            dq = writer.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
                continue
            weight = original.input[i] if original is not None and i < len(original.input) else None
            if weight not in float_inits:
                raise RuntimeError(f"no float weight for input {i} of {name} in the unquantized graph")
            if weight not in initializers:
                g.initializer.append(float_inits[weight])
                initializers.add(weight)
            node.input[i] = weight
    _prune(g, drop)
    return out


def _prune(g: Any, drop: set[str]) -> None:
    """Remove the dropped nodes, then nodes whose outputs nobody reads (dangling weight DequantizeLinear) and the
    initializers left unused."""
    graph_outputs = {o.name for o in g.output}
    nodes = [n for n in g.node if n.name not in drop]
    while True:
        used = {name for n in nodes for name in n.input} | graph_outputs
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del g.node[:]
    g.node.extend(nodes)
    used = {name for n in g.node for name in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


# --- OpenVINO (FakeQuantize from nncf.quantize) ----------------------------------------------------------------------

def _is_weight(fq: Any) -> bool:
    """A FakeQuantize on constant weights (possibly behind a Convert): not an activation quantizer."""
    node = fq.input_value(0).get_node()
    while node.get_type_name() in ("Convert", "Multiply", "Subtract") and node.get_input_size():
        if node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
            continue
        break
    return node.get_type_name() == "Constant"


def _readers(op: Any) -> list[str]:
    """Names of the computing ops that read this op's output, through reshapes and transposes (the ops NNCF
    quantized this input for)."""
    found, stack, seen = [], [op], set()
    while stack:
        node = stack.pop()
        for target in node.output(0).get_target_inputs():
            reader = target.get_node()
            if reader.get_friendly_name() in seen:
                continue
            seen.add(reader.get_friendly_name())
            if reader.get_type_name() in _PASS_THROUGH:
                stack.append(reader)
            else:
                found.append(reader.get_friendly_name())
    return found


def ov_groups(model: Any) -> Groups:
    """Activation FakeQuantize nodes of an NNCF-quantized model: group label -> (friendly names, the ops that read
    them), in graph order."""
    groups: Groups = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and not _is_weight(op):
            readers = _readers(op)
            _add(groups, readers or [op.get_friendly_name()], op.get_friendly_name(), readers)
    return groups


def _through(output: Any, types: tuple[str, ...]) -> Any:
    """Follow input 0 upward while the producer is one of `types`; the first other output."""
    while output.get_node().get_type_name() in types:
        output = output.get_node().input_value(0)
    return output


def ov_float_ops(model: Any, float_model: Any, quantizers: list[str] | tuple[str, ...],
                 ops: list[str] | tuple[str, ...] = ()) -> Any:
    """A copy of the OpenVINO model where the named activation FakeQuantize nodes are bypassed, and each named MatMul
    with weights reads its float weights, its unsmoothed input (NNCF's SmoothQuant scale undone) and its original
    bias (fast bias correction undone), all taken from `float_model`, the model that was quantized."""
    from openvino import opset13 as ops_

    out = model.clone()
    by_name = {op.get_friendly_name(): op for op in out.get_ordered_ops()}
    floats = {op.get_friendly_name(): op for op in float_model.get_ordered_ops()}
    missing = [q for q in quantizers if q not in by_name or by_name[q].get_type_name() != "FakeQuantize"]
    missing += [o for o in ops if o not in by_name]
    if missing:
        raise RuntimeError(f"quantizers or ops to keep in float are not in the model: {missing[:3]}")
    for name in quantizers:
        fq = by_name[name]
        fq.output(0).replace(fq.input_value(0))
    for name in ops:
        op, original = by_name[name], floats.get(name)
        if op.get_type_name() != "MatMul" or original is None or original.get_type_name() != "MatMul":
            continue
        weight = _through(op.input_value(1), ("Multiply", "Subtract", "Convert"))
        source = _through(original.input_value(1), ("Convert",))
        if weight.get_node().get_type_name() != "Constant" or source.get_node().get_type_name() != "Constant":
            continue  # an activation x activation product: nothing to restore
        op.input(1).replace_source_output(ops_.constant(source.get_node().get_data().copy()).output(0))
        act = op.input_value(0)
        if act.get_node().get_type_name() == "Multiply" and "nncf_smooth_quant" in act.get_node().get_friendly_name():
            op.input(0).replace_source_output(act.get_node().input_value(0))
        for target in op.output(0).get_target_inputs():
            add = target.get_node()
            if add.get_type_name() == "Add" and add.get_friendly_name() in floats:
                plain = floats[add.get_friendly_name()]
                for i in range(2):
                    bias = _through(plain.input_value(i), ("Convert",)).get_node()
                    if add.input_value(i).get_node().get_type_name() == "Constant" and \
                            bias.get_type_name() == "Constant":
                        add.input(i).replace_source_output(ops_.constant(bias.get_data().copy()).output(0))
    out.validate_nodes_and_infer_types()
    return out
