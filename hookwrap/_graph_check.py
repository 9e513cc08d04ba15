"""The static check of a captured graph: what it computes with, on which device, and how
much memory it can allocate, found without allocating anything.

A graph from a file is data that chooses the arguments of allowlisted operators. Before a
loaded model runs it, :func:`check_graph` runs the graph on *fake* tensors (no storage) in
the dtypes of the input signature recorded at save time, with symbolic sizes where the
graph is symbolic, and refuses it if any node

* fails there (a dtype or device mix no capture produces, a malformed argument);
* makes a tensor on another device than the CPU;
* allocates more than the byte budget from sizes that do not come from the inputs: a
  storage whose size is a constant must fit :func:`budget_for` (the larger of
  :data:`DEFAULT_BUDGET` and 4 x the model's largest tensor); one that grows with the input
  sizes must fit the larger of the budget and :data:`GROWTH` x the graph's inputs, at the
  sizes seen at capture; one whose size depends on tensor *values* is refused;
* uses an argument that :func:`hookwrap._graph.check_arguments` refuses once its dtypes
  are known (integer division, which can trap).

This replaces a count of elements in constant size lists: scalar sizes, repeats,
upsampling scales and size arithmetic are all covered, since they all end in a storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx

from ._graph import GraphFormatError, check_typed_arguments
from ._torch import quiet

__all__ = ["InputSpec", "check_graph", "budget_for", "DEFAULT_BUDGET", "GROWTH"]

DEFAULT_BUDGET = 64 << 20  # bytes
GROWTH = 16  # how many times its inputs a graph may allocate, at the sizes seen at capture


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its dtype, and each dimension as a fixed size (int), a symbol
    shared with other inputs (str), or None (a size of its own); ``hints`` are the sizes at
    capture, used where a dimension is symbolic."""

    dtype: torch.dtype
    dims: tuple[int | str | None, ...]
    hints: tuple[int, ...]


def budget_for(tensors: Iterable[tuple[torch.dtype, Iterable[int]]]) -> int:
    """The byte budget for a model whose tensors are these (dtype, shape) pairs."""
    largest = 0
    for dtype, shape in tensors:
        count = 1
        for size in shape:
            count *= int(size)
        largest = max(largest, count * _itemsize(dtype))
    return max(DEFAULT_BUDGET, 4 * largest)


def _itemsize(dtype: torch.dtype) -> int:
    return int(dtype.itemsize)


def check_graph(gm: fx.GraphModule, inputs: list[InputSpec], budget: int) -> None:
    """Run ``gm`` on fake inputs described by ``inputs`` and refuse what the module
    docstring lists.

    Raises:
        GraphFormatError: names the node (its index and operator) and what is wrong.
    """
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    env = ShapeEnv(allow_scalar_outputs=True, allow_dynamic_output_shape_ops=True)
    mode = FakeTensorMode(shape_env=env)
    symbols: dict[str, Any] = {}
    ours: set[Any] = set()

    def symbol(name: str, hint: int) -> Any:
        if name not in symbols:
            sym = env.create_symbol(hint, ConstantSource(name), dynamic_dim=DimDynamic.DYNAMIC)
            ours.add(sym)
            symbols[name] = env.create_symintnode(sym, hint=hint)
        return symbols[name]

    fakes: list[Tensor] = []
    input_bytes = 0
    with mode:
        for i, spec in enumerate(inputs):
            shape = [d if isinstance(d, int) else symbol(d if isinstance(d, str) else f"x{i}_{k}", h)
                     for k, (d, h) in enumerate(zip(spec.dims, spec.hints))]
            fakes.append(torch.empty(shape, dtype=spec.dtype))
            count = 1
            for h in spec.hints:
                count *= h
            input_bytes += count * _itemsize(spec.dtype)
    grown = max(budget, GROWTH * input_bytes)
    checker = _Checker(gm, env, ours, budget, grown)
    with quiet(), mode:  # fake tensors log whole tracebacks for what this check refuses
        checker.run(*fakes)


class _Checker(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, env: Any, ours: set[Any], budget: int, grown: int) -> None:
        super().__init__(gm)
        self.shape_env, self.ours, self.budget, self.grown = env, ours, budget, grown
        self.index = -1

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "placeholder":
            return super().run_node(n)
        if n.op == "output":
            return super().run_node(n)
        self.index += 1
        name = _op_name(n.target)
        try:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            check_typed_arguments(name, self.index, list(args), kwargs)
            result = getattr(self, n.op)(n.target, args, kwargs)
        except GraphFormatError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:300]
            raise GraphFormatError(f"graph node {self.index} ({name}) cannot run on the graph's inputs: "
                                   f"{type(exc).__name__}: {text}") from None
        for value in _tensors(result):
            self._check_tensor(name, value)
        return result

    def _check_tensor(self, name: str, value: Tensor) -> None:
        where = f"graph node {self.index} ({name})"
        if value.device.type != "cpu":
            raise GraphFormatError(f"{where} makes a tensor on the {value.device.type} device; a captured graph "
                                   f"computes on the CPU")
        nbytes = value.untyped_storage().nbytes()
        if isinstance(nbytes, int):
            if nbytes > self.budget:
                raise GraphFormatError(f"{where} allocates {nbytes} bytes, more than the budget of {self.budget} "
                                       f"bytes for sizes that do not come from the inputs")
            return
        expr = nbytes.node.expr
        if not expr.free_symbols <= self.ours:
            raise GraphFormatError(f"{where} allocates a size that depends on tensor values ({expr}), which no "
                                   f"captured hook does")
        at_capture = int(self.shape_env.guarding_hint_or_throw(expr))
        if at_capture > self.grown:
            raise GraphFormatError(f"{where} allocates {at_capture} bytes at the sizes seen at capture, more than "
                                   f"{self.grown} bytes ({GROWTH} x its inputs, or the budget)")


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        namespace, _, rest = target.name().partition("::")
        op, _, overload = rest.partition(".")
        return f"{namespace}.{op}.{overload or 'default'}"
    return getattr(target, "__name__", str(target))


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _tensors(item)]
    return []
