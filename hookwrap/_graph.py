"""A small, pickle-free JSON form for the aten graphs that capture produces.

``encode`` turns an FX graph of ``call_function`` nodes into plain JSON; ``decode``
rebuilds an ``fx.GraphModule`` from it. Decoding never imports anything and never
evaluates text from the file: every target must be an ``aten`` operator overload found
through ``torch.ops.aten`` or one of a fixed set of Python and ``torch.sym_*``
functions, every argument is a JSON scalar, a list, a reference to an earlier node or
one of a few tagged torch enums. Anything else is refused with :class:`GraphFormatError`.

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
MAX_NODES = 100_000

_NAME = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]*$")

_PY_FUNCS: dict[str, Any] = {
    f"operator.{n}": getattr(operator, n)
    for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow",
              "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "abs")
}
_PY_FUNCS.update({f"math.{n}": getattr(math, n) for n in ("ceil", "floor", "sqrt", "trunc")})
_PY_FUNCS.update({
    f"torch.{n}": getattr(torch, n)
    for n in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum")
    if hasattr(torch, n)
})
_PY_NAMES = {id(fn): name for name, fn in _PY_FUNCS.items()}

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
        raise GraphFormatError(f"node op must be a string, got {name!r}")
    if name in _PY_FUNCS:
        return _PY_FUNCS[name]
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "aten" or not all(_NAME.match(p) for p in parts[1:]):
        raise GraphFormatError(f"node op {name!r} is not an allowed operator")
    try:
        packet = getattr(torch.ops.aten, parts[1])
        overload = getattr(packet, parts[2])
    except (AttributeError, RuntimeError):
        raise GraphFormatError(f"node op {name!r} does not exist in this torch") from None
    if not isinstance(overload, torch._ops.OpOverload):
        raise GraphFormatError(f"node op {name!r} is not an operator overload")
    return overload


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
            if tag == "device" and isinstance(inner, str) and re.fullmatch(r"(cpu|cuda|meta)(:\d+)?", inner):
                return torch.device(inner)
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
        args = tuple(dec(a) for a in spec["args"])
        kwargs = {k: dec(v) for k, v in spec["kwargs"].items()}
        values.append(graph.call_function(target, args, kwargs))
    graph.output(tuple(dec(v) for v in outputs))
    try:
        graph.lint()
        return fx.GraphModule(nn.Module(), graph)
    except Exception as exc:  # codegen or lint refused the graph
        raise GraphFormatError(f"graph does not form a valid program: {exc}") from None
