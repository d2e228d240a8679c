"""Rewrite an exported ONNX model to compute in float16, keeping float32 input and output.

TensorRT 11 builds *strongly typed* networks only, so reduced precision has to
live in the ONNX graph itself: :func:`convert_onnx_to_fp16` turns an exported
float32 graph into a float16 one with Cast nodes at its boundary. It needs
``onnx`` only (imported lazily); onnxruntime can run the result on the CPU.
"""

from __future__ import annotations

import numpy as np

from semtile.errors import ModelError

__all__ = ["FP16_CONVERTER_VERSION", "convert_onnx_to_fp16"]

# Bump when convert_onnx_to_fp16 changes what it produces: TensorRT's engine cache key includes it.
FP16_CONVERTER_VERSION = "semtile-fp16/1"
_FP16_MAX = 65504.0
# (op_type, input index) that ONNX types as float32 whatever the data type is.
_ALWAYS_FLOAT32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def convert_onnx_to_fp16(model):
    """A copy of ``model`` computing in float16, with float32 graph inputs and outputs.

    Float32 initializers and ``Constant``/``ConstantOfShape`` values become
    float16 (clipped to the float16 range), ``Cast(to=FLOAT)`` nodes cast to
    float16, and Cast nodes at the graph boundary keep every graph input and
    output float32. Inputs that ONNX always types float32 (``Resize`` roi and
    scales) keep float32 values. The result is checked with ``onnx.checker``
    and strict type inference.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph

    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, index))
    graph_outputs = {o.name for o in graph.output}

    def split_uses(name: str) -> tuple[list, list]:
        """(float16 uses, float32-only uses) of tensor ``name``."""
        uses = consumers.get(name, [])
        fixed = [(n, i) for n, i in uses if (n.op_type, i) in _ALWAYS_FLOAT32_INPUTS]
        return [u for u in uses if u not in fixed], fixed

    def rewire(uses: list, new_name: str, old_name: str | None = None) -> None:
        for node, index in uses:
            if old_name is None or node.input[index] == old_name:
                node.input[index] = new_name

    def to_fp16_array(array: np.ndarray) -> np.ndarray:
        return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)

    new_initializers = []
    for init in graph.initializer:
        if init.data_type != FLOAT:
            continue
        fp16_uses, fixed = split_uses(init.name)
        if not fp16_uses and init.name not in graph_outputs:
            continue
        array = numpy_helper.to_array(init)
        if fixed:  # keep a float32 copy for the inputs that must stay float32
            keep = numpy_helper.from_array(array.astype(np.float32), init.name + "__fp32")
            new_initializers.append(keep)
            rewire(fixed, keep.name)
        init.CopyFrom(numpy_helper.from_array(to_fp16_array(array), init.name))
    graph.initializer.extend(new_initializers)

    prologue, epilogue = [], []
    for node in list(graph.node):
        produced = node.output[0] if node.output else ""
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                    fp16_uses, fixed = split_uses(produced)
                    if not fp16_uses and produced not in graph_outputs:
                        break
                    array = numpy_helper.to_array(attr.t)
                    attr.t.CopyFrom(numpy_helper.from_array(to_fp16_array(array), attr.t.name))
                    if fixed:
                        back = produced + "__fp32"
                        epilogue.append(helper.make_node("Cast", [produced], [back], to=FLOAT,
                                                         name=node.name + "__to_fp32"))
                        rewire(fixed, back)
                if attr.name in ("value_float", "value_floats"):  # Constant with a float attribute: float32
                    fp16_uses, _ = split_uses(produced)
                    if fp16_uses:
                        cast = produced + "__fp16"
                        epilogue.append(helper.make_node("Cast", [produced], [cast], to=FLOAT16,
                                                         name=node.name + "__to_fp16"))
                        rewire(fp16_uses, cast)
            if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
                if split_uses(produced)[0]:  # the default value is a float32 zero
                    node.attribute.append(helper.make_attribute(
                        "value", numpy_helper.from_array(np.zeros(1, np.float16))))
        elif node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT:
                fp16_uses, fixed = split_uses(produced)
                if fp16_uses or produced in graph_outputs:
                    to.i = FLOAT16
                    if fixed:
                        back = produced + "__fp32"
                        epilogue.append(helper.make_node("Cast", [produced], [back], to=FLOAT,
                                                         name=node.name + "__to_fp32"))
                        rewire(fixed, back)

    # The graph boundary: float32 inputs cast to float16 on entry ...
    initializer_names = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        if value.name in initializer_names:  # an old-style graph listing its weights as inputs
            value.type.tensor_type.elem_type = FLOAT16
            continue
        fp16_uses, _ = split_uses(value.name)
        if fp16_uses:
            cast = value.name + "__fp16"
            prologue.append(helper.make_node("Cast", [value.name], [cast], to=FLOAT16, name=value.name + "__to_fp16"))
            rewire(fp16_uses, cast)
    # ... and float16 results cast back to float32 on exit, under the original output names.
    for value in graph.output:
        if value.type.tensor_type.elem_type != FLOAT:
            continue
        inner = value.name + "__fp16"
        for node in graph.node:
            for index, name in enumerate(node.output):
                if name == value.name:
                    node.output[index] = inner
        rewire(consumers.get(value.name, []), inner, value.name)
        for init in graph.initializer:  # an output that is an initializer (degenerate but legal)
            if init.name == value.name:
                init.name = inner
        epilogue.append(helper.make_node("Cast", [inner], [value.name], to=FLOAT, name=value.name + "__to_fp32"))

    _toposort(graph, prologue + list(graph.node) + epilogue)
    del graph.value_info[:]  # stale float32 annotations; inference below recomputes them
    try:
        onnx.checker.check_model(out)
        out = onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several types
        raise ModelError(f"float16 conversion produced an invalid ONNX model: {exc}") from exc
    return out


def _toposort(graph, nodes: list) -> None:
    """Replace ``graph.node`` with ``nodes`` in topological order (added Casts must follow their inputs)."""
    import onnx

    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = []
    for node in nodes:  # detached copies: the originals may belong to graph.node, cleared below
        copy_ = onnx.NodeProto()
        copy_.CopyFrom(node)
        pending.append(copy_)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ModelError(f"ONNX graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
