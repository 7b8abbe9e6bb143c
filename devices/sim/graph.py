"""ONNX graph -> per-operator cost features for the latency simulator.

The graph is read with ``onnx.shape_inference.infer_shapes`` (strict mode, data
propagation on) so every operator's input and output shapes are known; each
costed operator becomes one row of :class:`GraphFeatures`:

- ``op_class``: index into :data:`OP_CLASSES`; ``dense_class``: the class
  the row would have as an ordinary conv (by kernel), which a profile uses for
  grouped convs with wide groups (``SimParams.grouped_dense_min_channels``);
- ``work``: the operator's arithmetic work, in operations, batch included:
  MACs for ``conv1x1``, ``conv3x3s1``, ``conv_kxk``, ``depthwise``, ``grouped`` and
  ``dense`` (multiply-accumulates, never FLOPs); output elements x window
  size for ``pooling``; output elements for ``elementwise`` (x inputs for
  variadic ones such as ``Sum``);
- ``bytes``: memory traffic in bytes, the sum of its activation inputs,
  weights (initializers) and outputs at their element sizes — a lower bound
  that assumes each tensor is read or written once (no cache reuse model).

``GraphFeatures.macs`` is the project's one MACs definition (the module
docstring of :mod:`harness.pruning` gives it and its sources): the sum over
``Conv`` of output elements x (C_in / group) x kH x kW and over ``Gemm`` /
``MatMul`` of output elements x K (the reduced dimension); bias inputs
(Conv's B, Gemm's C), BatchNormalization, activations, pooling and adds are
not MACs (they are costed as their own rows). For a torch model's export it
equals ``harness.pruning.count_macs_params(model, shape)[0]`` exactly
(tests/harness/test_macs_agree.py). A MatMul of two activations (attention)
counts too; the torch counter cannot see it (it refuses nn.MultiheadAttention).

Shape-only operators (``Reshape``, ``Flatten``, ``Identity``...) cost nothing
and are not rows: compilers (TVM, ncnn, ONNX Runtime) turn them into views.

``onnx`` is imported lazily inside the functions that need it, so the rest of
``devices/`` and the daemon do not depend on it.

Errors: :class:`SimGraphError` (a ``ValueError``) names the operator type and
node for an unsupported operator or a tensor whose shape cannot be inferred,
and the file for an unreadable or malformed graph.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "COST_FREE_OPS",
    "GraphFeatures",
    "OP_CLASSES",
    "SimGraphError",
    "SUPPORTED_OPS",
    "clear_cache",
    "features_from_model",
    "load_features",
]

#: Operator classes, each with its own effective throughput in a profile.
#: ``conv3x3s1`` (dense 3x3, stride 1, dilation 1) is apart from the other
#: ``conv_kxk`` (strided 3x3, 5x5, 7x7...) because ncnn and TVM's ARM schedules
#: run it with Winograd transforms (F(6,3) needs ~5x fewer multiplies), so its
#: effective MAC rate is far higher on the boards.
OP_CLASSES: tuple[str, ...] = ("conv1x1", "conv3x3s1", "conv_kxk", "depthwise", "grouped", "dense", "pooling",
                               "elementwise")
_CLS = {name: i for i, name in enumerate(OP_CLASSES)}

_POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean", "ReduceMax")
_ELTWISE_OPS = (
    "Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Sigmoid", "HardSigmoid", "HardSwish",
    "LeakyRelu", "PRelu", "Tanh", "Softmax", "LogSoftmax", "BatchNormalization", "Concat", "Pad", "Transpose",
    "Exp", "Sqrt", "Pow", "Neg", "Abs", "Erf", "Elu", "Selu", "Softplus", "Mish", "Gelu",
)
#: Operators that compilers turn into views or fold at build time: no cost, no row.
COST_FREE_OPS: tuple[str, ...] = (
    "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Shape", "Constant", "ConstantOfShape",
    "Gather", "Cast", "Dropout", "Slice", "Split", "Range", "Expand",
)
#: Every operator type the simulator accepts.
SUPPORTED_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul", *_POOL_OPS, *_ELTWISE_OPS, *COST_FREE_OPS)

_CACHE_SIZE = 512
_cache: OrderedDict[tuple, "GraphFeatures"] = OrderedDict()
_cache_lock = threading.Lock()


class SimGraphError(ValueError):
    """A graph the simulator cannot cost.

    Attributes:
        op_type: the ONNX operator type at fault (e.g. ``"LSTM"``), or None
            when the whole file is at fault.
        node: the node's name (or its first output's name), or None.
    """

    def __init__(self, message: str, *, op_type: str | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.op_type = op_type
        self.node = node


@dataclass(frozen=True, slots=True, eq=False)
class GraphFeatures:
    """Costed operators of one ONNX graph, as parallel arrays (one row per operator).

    Attributes:
        name: the graph's label (file stem or given name).
        node_names: node name per row (the first output's name if unnamed).
        op_types: ONNX operator type per row.
        op_class: int64 array (n,), index into :data:`OP_CLASSES`.
        work: float64 array (n,), operations (MACs for conv/dense classes).
        bytes: float64 array (n,), memory traffic in bytes.
        macs: total MACs of the conv and dense rows (int), the MACs proxy;
            weight-layer multiply-accumulates only, biases excluded (see the
            module docstring).
        input_shapes: {graph input name: shape} of the non-initializer inputs.
        channels: int64 array (n, 2): (input channels per group, output
            channels) of conv rows, (0, 0) elsewhere — for the profile's
            channel-alignment penalty (SIMD blocking of NCHWc / pack4 layouts).
        dense_class: int64 array (n,): the class of each row as an ordinary
            conv (``conv1x1``, ``conv3x3s1`` or ``conv_kxk`` by kernel) for a
            ``grouped`` row, ``op_class`` elsewhere (default: ``op_class``).
    """

    name: str
    node_names: tuple[str, ...]
    op_types: tuple[str, ...]
    op_class: np.ndarray
    work: np.ndarray
    bytes: np.ndarray
    macs: int
    input_shapes: dict[str, tuple[int, ...]]
    channels: np.ndarray | None = None
    dense_class: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.channels is None:
            object.__setattr__(self, "channels", np.zeros((len(self.node_names), 2), dtype=np.int64))
        if self.dense_class is None:
            object.__setattr__(self, "dense_class", np.asarray(self.op_class, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.node_names)

    def class_totals(self) -> dict[str, float]:
        """Work per operator class (operations), e.g. for a MACs breakdown."""
        sums = np.bincount(self.op_class, weights=self.work, minlength=len(OP_CLASSES))
        return {c: float(s) for c, s in zip(OP_CLASSES, sums)}


def _dims(type_proto: Any) -> tuple[tuple[int, ...] | None, int]:
    """(static shape or None, element size in bytes) of an ONNX TypeProto."""
    from onnx import helper

    tt = type_proto.tensor_type
    try:
        itemsize = int(np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    if not tt.HasField("shape"):
        return None, itemsize
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            return None, itemsize
    return tuple(dims), itemsize


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def features_from_model(model: Any, name: str = "graph") -> GraphFeatures:
    """Cost features of an in-memory ``onnx.ModelProto``.

    Args:
        model: the ONNX model (any opset the installed onnx can infer); its
            graph inputs must have static shapes (batch included).
        name: label stored in the result.

    Raises:
        SimGraphError: unsupported operator (names it), a shape that cannot be
            inferred (names the operator and node), or a malformed graph.
    """
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        bad = _first_unsupported(model)
        if bad is not None:
            raise bad from None
        raise SimGraphError(f"{name}: ONNX shape inference failed: {exc}") from None
    g = inferred.graph
    shapes: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        shapes[vi.name] = _dims(vi.type)
    init_bytes: dict[str, int] = {}
    for t in g.initializer:
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        try:
            itemsize = int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        init_bytes[t.name] = size * itemsize
        shapes.setdefault(t.name, (tuple(int(d) for d in t.dims), itemsize))
    input_shapes = {vi.name: shapes[vi.name][0] for vi in g.input if vi.name not in init_bytes}
    for iname, shp in input_shapes.items():
        if shp is None:
            raise SimGraphError(f"{name}: graph input {iname!r} has no static shape; export with a fixed "
                                "batch and resolution (e.g. 1x3x224x224)")

    names, types, cls, work, nbytes, chans, dense_cls = [], [], [], [], [], [], []
    macs = 0
    for idx, node in enumerate(g.node):
        op = node.op_type
        label = node.name or (node.output[0] if node.output else f"#{idx}")
        if node.domain not in ("", "ai.onnx") or op not in SUPPORTED_OPS:
            raise SimGraphError(
                f"{name}: unsupported operator {op!r} (node {label!r}, domain {node.domain or 'ai.onnx'!r}); "
                f"the simulator costs: {', '.join(sorted(set(SUPPORTED_OPS) - set(COST_FREE_OPS)))}",
                op_type=op, node=label)
        if op in COST_FREE_OPS:
            continue

        def shape_of(tensor: str, role: str) -> tuple[tuple[int, ...], int]:
            shp, size = shapes.get(tensor, (None, 4))
            if shp is None:
                raise SimGraphError(
                    f"{name}: operator {op!r} (node {label!r}): the shape of its {role} {tensor!r} could not be "
                    "inferred; export with static shapes", op_type=op, node=label)
            return shp, size

        out_shape, out_size = shape_of(node.output[0], "output")
        out_elems = math.prod(out_shape)
        act_in = [t for t in node.input if t and t not in init_bytes]
        weights = sum(init_bytes.get(t, 0) for t in node.input if t)
        in_bytes = 0
        for t in act_in:
            shp, size = shape_of(t, "input")
            in_bytes += math.prod(shp) * size
        traffic = float(in_bytes + weights + out_elems * out_size)

        chan = (0, 0)
        ordinary = None
        if op == "Conv":
            (x_shape, _), (w_shape, _) = shape_of(node.input[0], "input"), shape_of(node.input[1], "weight")
            if len(w_shape) < 3 or len(x_shape) != len(w_shape):
                raise SimGraphError(f"{name}: operator 'Conv' (node {label!r}) has weight shape {w_shape} "
                                    f"for input {x_shape}", op_type=op, node=label)
            group = int(_attr(node, "group", 1))
            c_in, c_out, kernel = x_shape[1], w_shape[0], w_shape[2:]
            ops = out_elems * w_shape[1] * math.prod(kernel)
            if group > 1 and group == c_in and w_shape[1] == 1:
                klass = "depthwise"
            elif group > 1:
                klass = "grouped"
            else:
                klass = None
            if all(k == 1 for k in kernel):
                ordinary = "conv1x1"
            elif (tuple(kernel) == (3, 3) and all(v == 1 for v in _attr(node, "strides", [1, 1]))
                  and all(v == 1 for v in _attr(node, "dilations", [1, 1]))):
                ordinary = "conv3x3s1"
            else:
                ordinary = "conv_kxk"
            klass = klass or ordinary
            # alignment channels: depthwise -> its width; an image stem (<= 4 input
            # channels per group) has its own first-layer kernels -> input ignored
            chan = (c_out, c_out) if klass == "depthwise" else (w_shape[1] if w_shape[1] > 4 else 0, c_out)
            macs += ops
        elif op in ("Gemm", "MatMul"):
            (a_shape, _) = shape_of(node.input[0], "input")
            k = a_shape[0] if (op == "Gemm" and int(_attr(node, "transA", 0))) else a_shape[-1]
            ops = out_elems * k
            klass = "dense"
            macs += ops
        elif op in _POOL_OPS:
            (x_shape, _) = shape_of(node.input[0], "input")
            if op.startswith("Global") or op.startswith("Reduce"):
                ops = math.prod(x_shape)
            else:
                ops = out_elems * math.prod(_attr(node, "kernel_shape", [1]))
            klass = "pooling"
        else:
            n_in = max(1, len(act_in))
            ops = out_elems * (n_in if op in ("Sum", "Max", "Min", "Concat") else 1)
            klass = "elementwise"
        names.append(label)
        types.append(op)
        cls.append(_CLS[klass])
        work.append(float(ops))
        nbytes.append(traffic)
        chans.append(chan)
        dense_cls.append(_CLS[ordinary if klass == "grouped" else klass])
    if not names:
        raise SimGraphError(f"{name}: the graph has no costed operator (only {len(g.node)} shape-only nodes)")
    return GraphFeatures(
        name=name, node_names=tuple(names), op_types=tuple(types),
        op_class=np.asarray(cls, dtype=np.int64), work=np.asarray(work, dtype=np.float64),
        bytes=np.asarray(nbytes, dtype=np.float64), macs=int(macs), input_shapes=input_shapes,
        channels=np.asarray(chans, dtype=np.int64).reshape(-1, 2), dense_class=np.asarray(dense_cls, dtype=np.int64),
    )


def _first_unsupported(model: Any) -> SimGraphError | None:
    for idx, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            label = node.name or (node.output[0] if node.output else f"#{idx}")
            return SimGraphError(f"unsupported operator {node.op_type!r} (node {label!r})",
                                 op_type=node.op_type, node=label)
    return None


def load_features(path: Path | str) -> GraphFeatures:
    """Cost features of the ONNX file at ``path``, cached by (path, mtime, size).

    A later call on the same unchanged file returns the cached object (the
    arrays are shared: treat them as read-only).

    Raises:
        SimGraphError: the file is missing, not ONNX, or not costable (see
            :func:`features_from_model`).
    """
    import onnx

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SimGraphError(f"{path}: cannot read ONNX file: {exc.strerror or exc}") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise SimGraphError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:  # an empty file parses as an empty ModelProto
        raise SimGraphError(f"{path}: not an ONNX model (no graph nodes; {st.st_size} bytes); pass a .onnx model")
    feats = features_from_model(model, name=path.stem)
    with _cache_lock:
        _cache[key] = feats
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    logger.debug("simulator features of %s: %d costed operators, %d MACs", path, len(feats), feats.macs)
    return feats


def clear_cache() -> None:
    """Forget every cached :class:`GraphFeatures`."""
    with _cache_lock:
        _cache.clear()
