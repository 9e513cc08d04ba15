"""A small, pickle-free JSON form for the aten graphs that capture produces.

``encode`` turns an FX graph of ``call_function`` nodes into plain JSON; ``decode``
rebuilds an ``fx.GraphModule`` from it. Decoding never imports anything and never
evaluates text from the file. Every target must be on :data:`ALLOWED_OPS`, an explicit
allowlist of pure tensor operators (arithmetic, comparisons, activations, reductions,
shape and view ops, indexing, linear algebra, casts, creation of initialised tensors,
random ops for dropout and noise, symbolic sizes), or one of a fixed set of Python and
``torch.sym_*`` functions on numbers. No operator that writes to its arguments, reads or
writes files or memory maps, returns uninitialised memory, or changes global state is
on it. Every argument is a JSON scalar, a list, a reference to an earlier node or one of
a few tagged torch enums (the only device is the CPU); Python functions take only nodes
and small numbers; :func:`check_arguments` refuses arguments that lead an allowlisted
operator into undefined behaviour. Anything else is refused with
:class:`GraphFormatError`, which names the operator. What a graph allocates, and on
which dtypes and devices it computes, is checked before it runs by
:mod:`hookwrap._graph_check`.

Schema (``version`` 1)::

    {"version": 1, "inputs": N,
     "nodes": [{"op": "aten.mul.Tensor", "args": [...], "kwargs": {...}}, ...],
     "outputs": [<value>, ...]}

A value is ``null``/bool/int/float/str, ``{"n": i}`` (input ``i`` when ``i < N``,
otherwise node ``i - N``), ``{"list": [...]}``, ``{"tuple": [...]}``,
``{"float": "inf"|"-inf"|"nan"}``, ``{"dtype": "float32"}``, ``{"device": "cpu"}``,
``{"layout": "strided"}`` or ``{"memory_format": "contiguous_format"}``.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

import torch
from torch import fx, nn

GRAPH_VERSION = 1
MAX_NODES = 10_000
MAX_PY_NUMBER = 2**31  # the largest constant a Python function node may take

# The allowlist, by family: ``aten.<name>.<overload>``. Built from every operator that
# capture produced over the test suite, the torchvision zoo and a corpus of realistic
# hooks, plus close siblings, then reviewed by hand. Capture functionalises graphs and
# turns empty/new_empty/empty_like into their zero-filled forms, so no in-place or
# uninitialising operator is needed. tests/test_graph.py runs every entry over hostile
# arguments and checks that none writes to its arguments, leaves its output unwritten,
# kills the process or fails with anything but a HookwrapError.
ALLOWED_FAMILIES: dict[str, tuple[str, ...]] = {
    "arithmetic": (
        "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Tensor", "rsub.Scalar", "mul.Tensor",
        "mul.Scalar", "div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode", "neg.default",
        "abs.default", "sign.default", "sgn.default", "signbit.default", "reciprocal.default",
        "sqrt.default", "rsqrt.default", "square.default", "pow.Tensor_Scalar", "pow.Tensor_Tensor",
        "pow.Scalar", "exp.default", "exp2.default", "expm1.default", "log.default", "log2.default",
        "log10.default", "log1p.default", "sin.default", "cos.default", "tan.default", "sinh.default", "cosh.default",
        "asin.default", "acos.default", "atan.default", "atan2.default", "erf.default", "erfc.default", "floor.default",
        "ceil.default", "round.default", "round.decimals", "trunc.default", "clamp.default", "clamp.Tensor",
        "clamp_min.default", "clamp_min.Tensor", "clamp_max.default", "clamp_max.Tensor", "clip.default",
        "clip.Tensor", "maximum.default", "minimum.default", "lerp.Scalar", "lerp.Tensor",
        "addcmul.default", "addcdiv.default", "floor_divide.default", "floor_divide.Scalar",
        "remainder.Scalar", "remainder.Tensor", "fmod.Scalar", "fmod.Tensor", "nan_to_num.default",
    ),
    "comparison_logical": (
        "eq.Scalar", "eq.Tensor", "ne.Scalar", "ne.Tensor", "gt.Scalar", "gt.Tensor", "ge.Scalar",
        "ge.Tensor", "lt.Scalar", "lt.Tensor", "le.Scalar", "le.Tensor", "where.self", "where.ScalarSelf",
        "where.ScalarOther", "where.Scalar", "masked_fill.Scalar", "masked_fill.Tensor",
        "logical_and.default", "logical_or.default", "logical_xor.default", "logical_not.default",
        "bitwise_and.Tensor", "bitwise_or.Tensor", "bitwise_xor.Tensor", "bitwise_not.default",
        "__and__.Tensor", "__or__.Tensor", "__xor__.Tensor", "isfinite.default", "isnan.default",
        "isinf.default", "any.default", "any.dim", "all.default", "all.dim",
    ),
    "activations": (
        "relu.default", "relu6.default", "leaky_relu.default", "gelu.default", "silu.default",
        "mish.default", "elu.default", "celu.default", "selu.default", "prelu.default", "sigmoid.default",
        "tanh.default", "hardtanh.default", "hardswish.default", "hardsigmoid.default", "softplus.default",
        "log_sigmoid.default", "threshold.default", "hardshrink.default", "softshrink.default",
        "glu.default", "softmax.int", "log_softmax.int",
    ),
    "reductions": (
        "sum.default", "sum.dim_IntList", "mean.default", "mean.dim", "prod.default", "prod.dim_int",
        "amax.default", "amin.default", "max.default", "max.dim", "min.default", "min.dim",
        "argmax.default", "argmin.default", "var.dim", "var.correction", "std.dim", "std.correction",
        "var_mean.dim", "var_mean.correction", "std_mean.dim", "std_mean.correction",
        "linalg_vector_norm.default", "logsumexp.default", "cumsum.default", "cumprod.default",
        "cummax.default", "cummin.default", "topk.default", "sort.default", "sort.stable",
        "argsort.default", "median.default", "median.dim", "quantile.scalar", "quantile.default",
        "item.default",
    ),
    "shape_view": (
        "view.default", "reshape.default", "view_as.default", "reshape_as.default", "permute.default",
        "transpose.int", "t.default", "mT.default", "movedim.int", "flatten.using_ints", "unflatten.int",
        "unsqueeze.default", "squeeze.default", "squeeze.dim", "squeeze.dims", "expand.default",
        "expand_as.default", "broadcast_to.default", "repeat.default", "tile.default",
        "repeat_interleave.self_int", "flip.default", "roll.default", "cat.default", "stack.default",
        "split.Tensor", "split_with_sizes.default", "chunk.default", "unbind.int", "narrow.default",
        "pad.default", "constant_pad_nd.default", "tril.default", "triu.default", "diag.default",
    ),
    "indexing_slicing": (
        "slice.Tensor", "select.int", "index.Tensor", "index_select.default", "gather.default",
        "scatter.value", "scatter.src", "scatter_add.default", "index_put.default", "index_add.default",
        "select_scatter.default", "slice_scatter.default", "one_hot.default", "embedding.default",
    ),
    "linear_algebra": (
        "matmul.default", "mm.default", "bmm.default", "mv.default", "dot.default", "outer.default",
        "addmm.default", "baddbmm.default", "einsum.default", "linear.default",
        "scaled_dot_product_attention.default", "cosine_similarity.default",
    ),
    "nn_layers": (
        "conv1d.default", "conv2d.default", "layer_norm.default", "rms_norm.default", "group_norm.default",
        "instance_norm.default", "avg_pool2d.default", "max_pool2d.default", "adaptive_avg_pool2d.default",
        "adaptive_max_pool2d.default", "upsample_nearest2d.vec", "upsample_bilinear2d.vec",
    ),
    "casts_copies": (
        "to.dtype", "to.dtype_layout", "to.device", "to.other", "type_as.default", "_to_copy.default",
        "clone.default", "contiguous.default", "detach.default", "lift_fresh_copy.default", "copy.default",
        "_assert_tensor_metadata.default",
    ),
    "creation": (
        "zeros_like.default", "ones_like.default", "full_like.default", "zeros.default", "ones.default",
        "full.default", "new_zeros.default", "new_ones.default", "new_full.default", "arange.default",
        "arange.start", "arange.start_step", "linspace.default", "fill.Scalar", "fill.Tensor",
    ),
    "random": (
        "dropout.default", "feature_dropout.default", "alpha_dropout.default",
        "feature_alpha_dropout.default", "native_dropout.default", "bernoulli.default", "bernoulli.p",
        "rand_like.default", "randn_like.default", "randint_like.default", "randint_like.low_dtype",
        "rand.default", "randn.default", "normal.Tensor_float", "normal.float_Tensor",
        "normal.Tensor_Tensor", "normal_functional.default", "uniform.default", "multinomial.default",
    ),
    "symbolic_size": (
        "sym_size.int", "_assert_scalar.default",
    ),
}
ALLOWED_OPS = frozenset(f"aten.{op}" for ops in ALLOWED_FAMILIES.values() for op in ops)

_NAME = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]*$")
MAX_INT_RESULT = 2**62


def _bounded(fn: Any, name: str) -> Any:
    """``fn`` refusing integer results beyond :data:`MAX_INT_RESULT`: repeated squaring of a
    size would otherwise build ever larger Python integers."""

    def run(*args: Any) -> Any:
        if name == "operator.pow" and all(isinstance(a, int) for a in args):
            base, exp = args
            if exp < 0 or exp > 64 or base.bit_length() * exp > 64:
                raise OverflowError(f"{name}{args} is out of range for a captured graph")
        result = fn(*args)
        if isinstance(result, int) and abs(result) > MAX_INT_RESULT:
            raise OverflowError(f"{name} gave an integer beyond {MAX_INT_RESULT} in a captured graph")
        return result

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    return run


# Python functions that torch.export puts in graphs to compute with symbolic sizes.
_PY_RAW: dict[str, Any] = {
    **{f"operator.{n}": getattr(operator, n) for n in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt",
        "ge")},
    **{f"math.{n}": getattr(math, n) for n in ("ceil", "floor", "trunc")},
    **{f"torch.{n}": getattr(torch, n) for n in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not")},
}
_PY_FUNCS: dict[str, Any] = {name: _bounded(fn, name) for name, fn in _PY_RAW.items()}
_PY_NAMES = {id(fn): name for name, fn in [*_PY_RAW.items(), *_PY_FUNCS.items()]}

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16,
    torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128,
)}
_LAYOUTS = {"strided": torch.strided}
_FORMATS = {
    "contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format, "channels_last_3d": torch.channels_last_3d,
}


class GraphFormatError(ValueError):
    """A graph could not be encoded, or a stored graph is malformed or not allowed."""


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        namespace, _, rest = target.name().partition("::")
        if namespace != "aten":
            raise GraphFormatError(f"operator {target.name()} is not an aten operator")
        op, _, overload = rest.partition(".")
        return f"aten.{op}.{overload or 'default'}"
    name = _PY_NAMES.get(id(target))
    if name is None:
        raise GraphFormatError(f"call target {getattr(target, '__qualname__', target)!r} cannot be stored")
    return name


def _resolve(name: Any) -> Any:
    if not isinstance(name, str):
        raise GraphFormatError(f"node op must be a string, got {str(name)[:80]!r}")
    if name in _PY_FUNCS:
        return _PY_FUNCS[name]
    if name not in ALLOWED_OPS:
        raise GraphFormatError(
            f"node op {name[:120]!r} is not on the allowlist of pure tensor operations (hookwrap._graph.ALLOWED_OPS)")
    parts = name.split(".")  # an allowlisted name: "aten.<op>.<overload>"
    try:
        packet = getattr(torch.ops.aten, parts[1])
        overload = getattr(packet, parts[2])
    except (AttributeError, RuntimeError):
        raise GraphFormatError(f"node op {name!r} does not exist in this torch") from None
    if not isinstance(overload, torch._ops.OpOverload):
        raise GraphFormatError(f"node op {name!r} is not an operator overload")
    return overload


def _check_py_args(name: str, index: int, values: list[Any]) -> None:
    """Python functions work on symbolic sizes: at least one argument is a graph value and
    the others are small numbers, never containers or strings (``operator.mul([0], 10**12)``
    would build a huge list)."""
    if not any(isinstance(v, fx.Node) for v in values):
        raise GraphFormatError(f"graph node {index} ({name}) computes on constants only; a captured graph "
                               f"uses Python functions only on graph values")
    for value in values:
        if isinstance(value, fx.Node):
            continue
        if isinstance(value, (bool, int, float)) and abs(value) <= MAX_PY_NUMBER:
            continue
        raise GraphFormatError(
            f"graph node {index} ({name}) takes {str(value)[:40]!r}; Python functions take only graph values "
            f"and numbers up to {MAX_PY_NUMBER}")


# Arguments that lead an allowlisted operator into undefined behaviour, refused whatever
# the tensors: circular padding leaves its output unwritten for negative pads; instance
# norm writes running statistics into the tensors given for them; a divisor override makes
# integer pooling divide by it (by zero, too).
def check_arguments(name: str, index: int, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse arguments of ``name`` that no capture produces and that lead to undefined
    behaviour (the ones a value alone decides; :func:`check_typed_arguments` checks those
    that depend on dtypes).

    Raises:
        GraphFormatError: names the node and the argument.
    """
    where = f"graph node {index} ({name})"
    if name == "aten.pad.default":
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        if mode not in ("constant", "reflect", "replicate"):
            raise GraphFormatError(f"{where} pads in mode {str(mode)[:40]!r}; a captured graph pads in constant, "
                                   f"reflect or replicate mode")
    elif name == "aten.instance_norm.default":
        stats = [args[i] if len(args) > i else kwargs.get(k) for i, k in ((3, "running_mean"), (4, "running_var"))]
        if any(v is not None for v in stats):
            raise GraphFormatError(f"{where} is given running statistics, which instance_norm writes into; a "
                                   f"captured graph passes None")
    elif name == "aten.avg_pool2d.default":
        override = args[6] if len(args) > 6 else kwargs.get("divisor_override")
        if override is not None:
            raise GraphFormatError(f"{where} has a divisor_override, which no captured hook uses")


_INT_DIVISIONS = frozenset({
    "aten.div.Tensor_mode", "aten.div.Scalar_mode", "aten.floor_divide.default", "aten.floor_divide.Scalar",
    "aten.remainder.Scalar", "aten.remainder.Tensor", "aten.fmod.Scalar", "aten.fmod.Tensor",
})


def check_typed_arguments(name: str, index: int, args: list[Any], kwargs: dict[str, Any]) -> None:
    """The checks of :func:`check_arguments` that need the tensors' dtypes (real or fake):
    integer division and remainder, which kill the process for ``INT_MIN / -1``.

    Raises:
        GraphFormatError: names the node.
    """
    if name in _INT_DIVISIONS:
        tensors = [v for v in [*args, *kwargs.values()] if isinstance(v, torch.Tensor)]
        if tensors and not any(t.is_floating_point() or t.is_complex() for t in tensors):
            raise GraphFormatError(f"graph node {index} ({name}) divides integer tensors, which can trap "
                                   f"(INT_MIN / -1); a captured graph divides floating-point tensors")


def encode(graph: fx.Graph, inputs: list[fx.Node], outputs: list[Any] | None = None) -> dict[str, Any]:
    """Encode ``graph``; ``inputs`` are its placeholders in calling order, ``outputs`` the
    values to return (default: what the output node returns). Unused placeholders that
    are not inputs are dropped.

    Raises:
        GraphFormatError: a node is not a call of an allowed function, or an argument
            has a type the format does not carry.
    """
    index: dict[fx.Node, int] = {node: i for i, node in enumerate(inputs)}
    nodes: list[dict[str, Any]] = []
    encoded_outputs: Any = None

    def enc(value: Any) -> Any:
        if isinstance(value, fx.Node):
            if value not in index:
                raise GraphFormatError(f"node {value.name} is used before it is defined")
            return {"n": index[value]}
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, list):
            return {"list": [enc(v) for v in value]}
        if isinstance(value, tuple):
            return {"tuple": [enc(v) for v in value]}
        if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _DTYPES:
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"device": str(value)}
        if isinstance(value, torch.layout) and value is torch.strided:
            return {"layout": "strided"}
        if isinstance(value, torch.memory_format):
            for key, fmt in _FORMATS.items():
                if fmt is value:
                    return {"memory_format": key}
        raise GraphFormatError(f"argument {value!r} of type {type(value).__name__} cannot be stored")

    for node in graph.nodes:
        if node.op == "placeholder":
            if node not in index and node.users:
                raise GraphFormatError(f"placeholder {node.name} is used but is not one of the graph inputs")
            continue
        if node.op == "output":
            returned = outputs if outputs is not None else node.args[0]
            returned = list(returned) if isinstance(returned, (tuple, list)) else [returned]
            encoded_outputs = [enc(v) for v in returned]
            continue
        if node.op != "call_function":
            raise GraphFormatError(
                f"node {node.name} is a {node.op} node; only plain operator calls can be stored "
                f"(control-flow operators and submodules are not supported)"
            )
        nodes.append({
            "op": _target_name(node.target),
            "args": [enc(a) for a in node.args],
            "kwargs": {k: enc(v) for k, v in node.kwargs.items()},
        })
        index[node] = len(inputs) + len(nodes) - 1
    if encoded_outputs is None:
        raise GraphFormatError("graph has no output node")
    return {"version": GRAPH_VERSION, "inputs": len(inputs), "nodes": nodes, "outputs": encoded_outputs}


def decode(data: Any) -> fx.GraphModule:
    """Rebuild a GraphModule from :func:`encode`'s JSON, validating every part.

    Raises:
        GraphFormatError: the data is malformed or names something that is not allowed.
    """
    if not isinstance(data, dict) or data.get("version") != GRAPH_VERSION:
        raise GraphFormatError(f"graph must be an object with version {GRAPH_VERSION}")
    n_inputs, nodes, outputs = data.get("inputs"), data.get("nodes"), data.get("outputs")
    if not isinstance(n_inputs, int) or isinstance(n_inputs, bool) or not 0 <= n_inputs <= MAX_NODES:
        raise GraphFormatError("graph 'inputs' must be a small non-negative integer")
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES or not isinstance(outputs, list):
        raise GraphFormatError("graph 'nodes' and 'outputs' must be lists")
    graph = fx.Graph()
    values: list[fx.Node] = [graph.placeholder(f"x{i}") for i in range(n_inputs)]

    def dec(value: Any, depth: int = 0) -> Any:
        if depth > 32:
            raise GraphFormatError("graph argument nesting is too deep")
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, dict) and len(value) == 1:
            (tag, inner), = value.items()
            if tag == "n":
                if not isinstance(inner, int) or isinstance(inner, bool) or not 0 <= inner < len(values):
                    raise GraphFormatError(f"graph refers to node {inner!r}, which is not defined before its use")
                return values[inner]
            if tag in ("list", "tuple") and isinstance(inner, list):
                items = [dec(v, depth + 1) for v in inner]
                return items if tag == "list" else tuple(items)
            if tag == "float" and inner in ("inf", "-inf", "nan"):
                return float(inner)
            if tag == "dtype" and inner in _DTYPES:
                return _DTYPES[inner]
            if tag == "device" and inner == "cpu":  # a captured graph computes on the CPU
                return torch.device("cpu")
            if tag == "device":
                raise GraphFormatError(f"graph argument {value!r} names a device other than the CPU, on which a "
                                       f"captured graph computes")
            if tag == "layout" and inner in _LAYOUTS:
                return _LAYOUTS[inner]
            if tag == "memory_format" and inner in _FORMATS:
                return _FORMATS[inner]
        raise GraphFormatError(f"graph argument {value!r} is not an allowed value")

    for i, spec in enumerate(nodes):
        if not isinstance(spec, dict) or set(spec) != {"op", "args", "kwargs"}:
            raise GraphFormatError(f"graph node {i} must be an object with op, args, kwargs")
        if not isinstance(spec["args"], list) or not isinstance(spec["kwargs"], dict):
            raise GraphFormatError(f"graph node {i} has malformed args or kwargs")
        if not all(isinstance(k, str) and _NAME.match(k) for k in spec["kwargs"]):
            raise GraphFormatError(f"graph node {i} has a malformed keyword name")
        target = _resolve(spec["op"])
        try:
            args = tuple(dec(a) for a in spec["args"])
            kwargs = {k: dec(v) for k, v in spec["kwargs"].items()}
        except GraphFormatError as exc:
            raise GraphFormatError(f"graph node {i} ({spec['op']}): {exc}") from None
        if spec["op"] in _PY_FUNCS:
            _check_py_args(spec["op"], i, [*args, *kwargs.values()])
        else:
            check_arguments(spec["op"], i, list(args), kwargs)
        values.append(graph.call_function(target, args, kwargs))
    graph.output(tuple(dec(v) for v in outputs))
    try:
        graph.lint()
        return fx.GraphModule(nn.Module(), graph)
    except Exception as exc:  # codegen or lint refused the graph
        raise GraphFormatError(f"graph does not form a valid program: {exc}") from None
