"""``bisect``: name the first module whose output diverges between eager and ONNX.

The torch side runs the reference once with a temporary forward hook on every module
(registered last, so it sees the output after the module's own hooks), recording each
output in the order outputs are produced: a leaf comes before the block that contains it.

The ONNX side reads the module scopes the dynamo exporter writes into each node's
metadata (``pkg.torch.onnx.name_scopes``). A module's output is the value produced
inside its scope and used outside it. Those values are marked as extra graph outputs and
computed in a single onnxruntime session run. Modules whose scope has no nodes left
(fused into a neighbour, such as a Conv2d folded into the BatchNorm2d after it, or
constant-folded away), modules called more than once, and modules whose output cannot be
identified are skipped and listed with the reason; hookwrap does not guess.

Values are compared with the parity rule ``|onnx - ref| <= atol + rtol * |ref|``.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree

from . import wrappers as W
from ._fs import write_json
from ._onnx import OnnxFile, open_session, read_onnx, run_session
from ._torch import forked_rng, reseed
from .compare import DEFAULT_ATOL, DEFAULT_RTOL, compare_exact
from .errors import HookwrapError, InvalidArgumentError
from .parity_inputs import signature
from .reference import ModelReference, SeededOps, model_inputs

__all__ = ["bisect", "BisectReport", "LayerError"]

_SCOPES = "pkg.torch.onnx.name_scopes"


@dataclass
class LayerError:
    """The comparison of one module's output."""

    index: int
    path: str
    module: str
    shape: list[int]
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BisectReport:
    """Per-module errors in output order, the first divergent module and what was skipped."""

    onnx: str
    atol: float
    rtol: float
    layers: list[LayerError]
    skipped: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def first_divergent(self) -> str | None:
        """The path of the first module (in output order) whose output is out of tolerance."""
        bad = next((layer for layer in self.layers if not layer.passed), None)
        return None if bad is None else bad.path

    def __bool__(self) -> bool:
        """True when no compared module diverges."""
        return self.first_divergent is None

    def summary(self) -> str:
        where = self.first_divergent
        head = "bisect: no module diverges" if where is None else f"bisect: first divergent module: {where or '<root>'}"
        return (f"{head} ({len(self.layers)} modules compared, {len(self.skipped)} skipped; "
                f"atol {self.atol:g}, rtol {self.rtol:g})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx": self.onnx, "atol": self.atol, "rtol": self.rtol, "first_divergent": self.first_divergent,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "notes": list(self.notes), "seconds": round(self.seconds, 3),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The report as JSON; also written to ``path`` if given."""
        return write_json(self.to_dict(), path, indent)

    def rows(self, *, limit: int = 40) -> list[list[str]]:
        """Table rows (header first): the layers around the first divergence."""
        rows = [["#", "module", "type", "max |diff|", "max rel", "result"]]
        layers = self.layers
        first = next((i for i, layer in enumerate(layers) if not layer.passed), None)
        if len(layers) > limit:
            start = 0 if first is None else max(0, min(first - limit // 2, len(layers) - limit))
            layers = layers[start:start + limit]
        for layer in layers:
            rows.append([str(layer.index), layer.path or "<root>", layer.module, f"{layer.max_abs_diff:.3g}",
                         f"{layer.max_rel_diff:.3g}", "ok" if layer.passed else "FAIL"])
        return rows

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the max absolute error per module (log scale), the tolerance ``atol`` as a
        line, and the first divergent module; save a PNG."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from ._fs import atomic_path

        errors = [max(layer.max_abs_diff, 1e-12) for layer in self.layers]
        fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, len(errors) * 0.12)), 4.5), dpi=100)
        colors = ["tab:blue" if layer.passed else "tab:red" for layer in self.layers]
        ax.scatter(range(len(errors)), errors, c=colors, s=14, zorder=3)
        ax.plot(range(len(errors)), errors, color="tab:gray", linewidth=0.8, zorder=2)
        ax.axhline(self.atol, color="tab:orange", linestyle="--", label=f"atol = {self.atol:g}")
        first = next((i for i, layer in enumerate(self.layers) if not layer.passed), None)
        if first is not None:
            ax.axvline(first, color="tab:red", linestyle=":", label=f"first divergent: {self.layers[first].path}")
        ax.set_yscale("log")
        ax.set_xlabel("module, in the order outputs are produced")
        ax.set_ylabel("max |onnx - eager|")
        ax.set_title(f"hookwrap bisect: {Path(self.onnx).name}")
        ax.legend(loc="upper left")
        fig.tight_layout()
        target = Path(path)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return target


def _scopes(node: Any) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == _SCOPES:
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value[:-1]  # the last entry names the operation, not a module
    return None


def _torch_outputs(model: nn.Module, args: tuple, mode: Any) -> tuple[list[tuple[str, nn.Module, list[np.ndarray]]], set[str]]:
    """One seeded run of ``model`` under ``mode`` (the caller's RNG untouched): every
    module's output leaves in execution order, and the paths of modules called twice."""
    order: list[tuple[str, nn.Module, list[np.ndarray]]] = []
    calls: dict[str, int] = {}
    handles = []

    def make(path: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[path] = calls.get(path, 0) + 1
            if calls[path] == 1:
                leaves = [v.detach().cpu().numpy().copy() for v in _pytree.tree_leaves(output) if isinstance(v, Tensor)]
                order.append((path, module, leaves))

        return hook

    try:
        for path, module in model.named_modules():
            handles.append(module.register_forward_hook(make(path)))
        with forked_rng(), torch.no_grad(), mode:
            reseed(0)
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    repeated = {p for p, n in calls.items() if n > 1}
    return order, repeated


def _boundaries(graph: Any) -> tuple[dict[str, list[str]], set[str]]:
    """Module path -> values produced inside its scope and used outside it (in order)."""
    node_scopes = [_scopes(n) for n in graph.node]
    if not any(s is not None for s in node_scopes):
        return {}, set()
    inside: dict[str, set[int]] = {}
    for i, scopes in enumerate(node_scopes):
        for scope in scopes or ():
            inside.setdefault(scope, set()).add(i)
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    result: dict[str, list[str]] = {}
    for scope, members in inside.items():
        outs = []
        for value, i in producer.items():
            if i in members and (value in graph_outputs or any(c not in members for c in consumers.get(value, []))):
                outs.append((i, value))
        result[scope] = [v for _, v in sorted(outs)]
    return result, set(inside)


def bisect(
    reference: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Any = None,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> BisectReport:
    """Compare every module's output between the eager ``reference`` and the ONNX file.

    Args:
        reference: the original eager model, hooks and all (run in eval mode).
        onnx_path: an ONNX file written by the dynamo exporter (it records module scopes).
        inputs: one tuple, a list of tuples (the first is used) or an ``.npz`` path, as
            for :func:`hookwrap.check_parity`; ``None`` generates one from the ONNX inputs.
        atol, rtol: the parity rule's tolerances.

    Returns:
        A :class:`BisectReport`; ``first_divergent`` names the first module whose output
        is out of tolerance, ``plot(path)`` draws the error per module.

    Raises:
        HookwrapError: the model is stochastic (bisect compares single runs), or the ONNX
            file cannot be read.

    Example:
        >>> report = hw.bisect(model, "broken.onnx", (x,))
        >>> report.first_divergent
        'layer3.0.conv2'
    """
    if not isinstance(reference, nn.Module):
        raise InvalidArgumentError(f"reference must be an nn.Module, got {type(reference).__name__}")
    try:
        return _bisect(reference, Path(onnx_path), inputs, atol, rtol)
    except HookwrapError:
        raise
    except Exception as exc:  # every failure is a HookwrapError, with what failed
        raise HookwrapError(f"bisect of {os.fspath(onnx_path)!r} failed: {type(exc).__name__}: {exc}") from exc


def _bisect(reference: nn.Module, path: Path, inputs: Any, atol: float, rtol: float) -> BisectReport:
    start = time.perf_counter()
    onnx_file = read_onnx(path)
    if onnx_file.random_ops:
        raise HookwrapError(
            f"{path.name} has random operators: bisect compares one run of each side, so it needs a "
            f"deterministic model (compare a copy with its dropout switched off)")
    sig = signature(open_session(onnx_file))
    sets, spec = model_inputs(inputs if not isinstance(inputs, list) else inputs[:1], sig, seed=0, random_inputs=0)
    arrays = sets.sets[0]
    ref = ModelReference(reference, spec)
    watch = SeededOps()
    with ref.running():
        order, repeated = _torch_outputs(reference, ref.args(arrays), watch.mode)
    if watch.seen:
        raise HookwrapError(
            f"the reference draws random numbers ({', '.join(sorted(watch.seen))}): bisect compares one run "
            f"of each side, so it needs a deterministic model")
    bounds, scoped = _boundaries(onnx_file.proto.graph)
    notes = [] if scoped else [f"{path.name} has no module-scope metadata; export it with the dynamo exporter "
                               f"(hw.export_onnx's default) to bisect"]
    wanted, skipped = _match_modules(order, repeated, bounds, scoped, onnx_file.proto)
    computed = _run_with_outputs(onnx_file, sorted({w[3] for w in wanted}), dict(zip(sig.names, arrays)))
    layers = _compare_layers(wanted, computed, skipped, atol, rtol)
    return BisectReport(onnx=str(path), atol=float(atol), rtol=float(rtol), layers=layers, skipped=skipped,
                        notes=notes, seconds=time.perf_counter() - start)


_Wanted = tuple[str, nn.Module, list[np.ndarray], str]


def _match_modules(order: list[tuple[str, nn.Module, list[np.ndarray]]], repeated: set[str],
                   bounds: dict[str, list[str]], scoped: set[str], proto: Any) -> tuple[list[_Wanted], list[tuple[str, str]]]:
    """Each module's ONNX output value, or why it is skipped."""
    skipped: list[tuple[str, str]] = []
    shapes = _value_shapes(proto)
    wanted: list[_Wanted] = []
    for module_path, module, leaves in order:
        if not leaves:
            skipped.append((module_path, "returns no tensor"))
        elif module_path in repeated:
            skipped.append((module_path, "called more than once: its outputs cannot be told apart"))
        elif module_path != "" and module_path not in scoped:
            skipped.append((module_path, "no ONNX node carries its scope: fused into another module or folded away"))
        else:
            values = [o.name for o in proto.graph.output] if module_path == "" else bounds.get(module_path, [])
            if len(values) == len(leaves):
                wanted.append((module_path, module, leaves, values[0]))
                continue
            candidates = [v for v in values if v in shapes and _compatible(shapes[v], leaves[0].shape)]
            if len(candidates) != 1:
                skipped.append((module_path, f"its output cannot be identified among {len(values)} ONNX values"))
            else:
                wanted.append((module_path, module, leaves, candidates[0]))
    return wanted, skipped


def _compare_layers(wanted: list[_Wanted], computed: dict[str, np.ndarray], skipped: list[tuple[str, str]],
                    atol: float, rtol: float) -> list[LayerError]:
    """The parity rule, module by module (NaNs and infinities must match too)."""
    layers: list[LayerError] = []
    for module_path, module, leaves, value in wanted:
        ref = leaves[0]
        got = computed.get(value)
        if got is None or got.shape != ref.shape:
            skipped.append((module_path, f"shape differs ({None if got is None else list(got.shape)} vs "
                                         f"{list(ref.shape)}): not comparable"))
            continue
        stats = compare_exact(ref, got.astype(ref.dtype, copy=False), atol, rtol)
        layers.append(LayerError(
            index=len(layers), path=module_path, module=W.host_base(module).__name__, shape=list(ref.shape),
            max_abs_diff=stats.max_abs_diff or 0.0, mean_abs_diff=stats.mean_abs_diff or 0.0,
            max_rel_diff=stats.max_rel_diff or 0.0, passed=stats.passed))
    return layers


def _value_shapes(proto: Any) -> dict[str, list[int | None]]:
    """Declared shape of every value the graph annotates (``None`` for symbolic dims)."""
    shapes: dict[str, list[int | None]] = {}
    for info in [*proto.graph.value_info, *proto.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _compatible(onnx_shape: list[int | None], shape: tuple[int, ...]) -> bool:
    return len(onnx_shape) == len(shape) and all(d is None or d == s for d, s in zip(onnx_shape, shape))


def _run_with_outputs(model: OnnxFile, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a copy of the graph once with ``names`` added as outputs. Nothing is written:
    the session is made from bytes, and external data is read from the model's folder."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    graph = proto.graph
    known = {o.name for o in graph.output}
    types = {v.name: v.type for v in graph.value_info}
    missing_types = [n for n in names if n not in known and n not in types]
    if missing_types:
        inferred = onnx.shape_inference.infer_shapes(proto)
        types.update({v.name: v.type for v in inferred.graph.value_info})
    for name in names:
        if name in known:
            continue
        info = onnx.ValueInfoProto(name=name)
        if name in types:
            info.type.CopyFrom(types[name])
        graph.output.append(info)
    output_names = [o.name for o in graph.output]
    session = open_session(model, proto)
    return dict(zip(output_names, run_session(session, feeds, output_names, what=f"{model.path.name} with every "
                                                                                  f"module's output")))
