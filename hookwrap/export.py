"""``export_onnx``: convert (a copy), export to ONNX, check, and describe the result."""

from __future__ import annotations

import inspect
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils import _pytree

from ._fs import commit, file_errors, fsync_dir, private_folder, write_json
from ._onnx import RANDOM_OPS, all_nodes, random_ops_of, remember
from ._onnx_write import write_model
from ._torch import batch_of_two, eval_mode, quiet
from ._txn import deepcopy_model
from .convert import check_example_inputs, convert_in_place
from .errors import Blocker, ExportError, HookwrapError, InvalidArgumentError, UnconvertibleHookError
from .inventory import forward_hooks, list_hooks
from .report import ConversionReport, Kind, Plan, conversion_report

__all__ = ["export_onnx", "ExportResult", "RANDOM_OPS", "random_ops_of"]

@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and what the graph holds."""

    path: Path
    exporter: str
    opset: int
    node_counts: dict[str, int]
    random_ops: dict[str, int]
    files: list[Path]
    external_data: bool
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    converted: bool
    seconds: float
    report: ConversionReport | None = field(default=None, repr=False)
    inline_hooks: list[Blocker] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> int:
        return sum(self.node_counts.values())

    @property
    def stochastic(self) -> bool:
        return bool(self.random_ops)

    def summary(self) -> str:
        how = "converted model" if self.converted else ("hooked model (hooks inline)" if self.inline_hooks else "model")
        return (f"exported the {how} to {self.path.name} with the {self.exporter} exporter: opset {self.opset}, "
                f"{self.nodes} nodes, random ops {self.random_ops or 'none'}, {self.seconds:.1f} s")

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The result as JSON; also written to ``path`` if given."""
        return write_json(self.to_dict(), path, indent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "exporter": self.exporter, "opset": self.opset,
            "nodes": self.nodes, "node_counts": dict(sorted(self.node_counts.items())),
            "random_ops": dict(self.random_ops), "files": [str(f) for f in self.files],
            "bytes": sum(f.stat().st_size for f in self.files if f.exists()),
            "external_data": self.external_data, "inputs": self.input_names, "outputs": self.output_names,
            "dynamic_batch": self.dynamic_batch, "converted": self.converted, "seconds": round(self.seconds, 3),
            "inline_hooks": [{"path": b.path, "kind": b.kind, "name": b.name, "reason": b.reason}
                             for b in self.inline_hooks],
            "notes": list(self.notes), "summary": self.summary(),
        }


def forward_input_names(model: nn.Module, n: int) -> list[str]:
    """Names for ``n`` flattened positional inputs, from ``forward``'s parameters."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params[:n]]
    except (TypeError, ValueError):
        names = []
    return names + [f"input_{i}" for i in range(len(names), n)]


# export_onnx's progress: converted, exported and written, checked and in place.
_PHASES = 3


def _dynamo_export(model: nn.Module, example: tuple, tmp: Path, *, dynamic_batch: bool,
                   opset: int | None) -> tuple[Any, list[str]]:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple(
            _pytree.tree_map(lambda v: {0: batch} if isinstance(v, Tensor) and v.dim() >= 1 else None, arg)
            for arg in example
        )
        example = batch_of_two(example)
    with quiet():
        program = torch.onnx.export(
            model, example, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
            verbose=False, optimize=True,
        )
        if program is None:  # pragma: no cover - defensive
            raise ExportError("torch.onnx.export returned no program")
        write_model(program, tmp)
    return _structure(program), [str(v.name) for v in program.model.graph.inputs]


def _structure(program: Any) -> Any:
    """The exported graph as an ``onnx.ModelProto`` without weight bytes: initializers are
    declared as inputs (name, type, shape), so ``onnx.checker`` validates every node and
    type without copying or re-reading the weights."""
    from onnx_ir import serde

    graph = program.model.graph
    initializers = dict(graph.initializers)
    inputs = list(graph.inputs)
    graph.initializers.clear()
    graph.inputs.extend(initializers.values())
    try:
        return serde.serialize_model(program.model)
    finally:
        graph.inputs.clear()
        graph.inputs.extend(inputs)
        graph.initializers.update(initializers)


def _legacy_export(model: nn.Module, example: tuple, tmp: Path, *, dynamic_batch: bool,
                   opset: int | None) -> tuple[Any, list[str]]:
    leaves = [v for v in _pytree.tree_leaves(example) if isinstance(v, Tensor)]
    names = forward_input_names(model, len(leaves))
    with torch.no_grad():
        probe = model(*example)
    n_out = len([v for v in _pytree.tree_leaves(probe) if isinstance(v, Tensor)])
    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    axes = None
    if dynamic_batch:
        axes = {name: {0: "batch"} for name, t in zip(names, leaves) if t.dim() >= 1}
        axes.update({name: {0: "batch"} for name in out_names})
    with quiet():
        torch.onnx.export(
            model, example, str(tmp), dynamo=False, opset_version=opset or 17, input_names=names,
            output_names=out_names, dynamic_axes=axes, do_constant_folding=True,
        )
    import onnx

    proto = onnx.load(str(tmp), load_external_data=False)
    weights = {i.name for i in proto.graph.initializer}
    return proto, [i.name for i in proto.graph.input if i.name not in weights]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _odd_outputs(model: nn.Module, example: tuple) -> list[str]:
    """Paths and types of the non-tensor objects in the model's output (a KV cache), which
    no exporter can turn into ONNX outputs. Runs the model once; only on a failed export."""
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(*example)
        leaves, _ = _pytree.tree_flatten_with_path(out)
    except Exception:
        return []
    return [f"output{_pytree.keystr(path)} ({type(v).__name__})" for path, v in leaves
            if not isinstance(v, (Tensor, int, float, bool, str, type(None)))]


def _explain(exc: BaseException, exporter: str, odd: list[str] | None = None) -> str:
    root = exc
    while root.__cause__ is not None:  # the exporter wraps the real error
        root = root.__cause__
    text = _ANSI.sub("", f"{type(root).__name__}: {root}").strip()
    first = text.splitlines()[0][:400] if text else type(root).__name__
    if odd:
        return (f"the {exporter} exporter cannot export the model's output: it holds {', '.join(odd[:3])}, which "
                f"is not a tensor ({first[:200]}); torch.onnx.export cannot flatten it either. Fix: build the model "
                f"without it (for a Hugging Face model, config.use_cache = False: the logits are the same), or "
                f"register its type with torch.utils._pytree (for transformers' caches: transformers.integrations."
                f"executorch.register_dynamic_cache_export_support()) so that its tensors become outputs")
    if exporter == "legacy" and "training mode" in text:
        return (f"the legacy exporter cannot export dropout that stays on in eval mode ({first}); "
                f"use exporter='dynamo', which exports it with random operators")
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([\w.:]+)'", text)
    if missing:
        return (f"the {exporter} exporter has no ONNX translation for the operator {missing.group(1)} ({first[:200]}); "
                f"it is in the model itself, so torch.onnx.export fails the same way without hookwrap. Fix: "
                f"replace the module that calls it, or give the exporter a translation "
                f"(torch.onnx.export(..., custom_translation_table=...))")
    return f"the {exporter} exporter failed ({first})"


def _other_exporter(model: nn.Module, example: tuple, exporter: str) -> str:
    """After a failed export: whether the other exporter exports ``model`` (tried in a private
    folder that is removed), so that the hint names a fix that works."""
    import tempfile

    other = "legacy" if exporter == "dynamo" else "dynamo"
    with tempfile.TemporaryDirectory() as folder, eval_mode(model), torch.no_grad():
        try:
            run = _dynamo_export if other == "dynamo" else _legacy_export
            run(model, example, Path(folder) / "m.onnx", dynamic_batch=False, opset=None)
        except Exception as exc:
            return f"; exporter='{other}' fails too ({_explain(exc, other)[:200]})"
    return f"; exporter='{other}' exports this model (tried): pass exporter='{other}'"


def _subject(model: nn.Module, example: tuple, exporter: str) -> tuple[nn.Module, bool, list[Blocker], list[str]]:
    """What to export: ``model`` itself when it has no forward hooks (nor parametrizations,
    which are baked like the weight transforms of hooks); else a converted copy
    (sharing the unchanged weights; modules whose weight transforms are baked own theirs,
    since baking changes them); else, when no wrapper can stand in for a hook and the
    exporter is dynamo, a copy of the hooked model, whose hooks the exporter runs inline.
    Returns (subject, converted, inline hooks, notes)."""
    listed = list_hooks(model)
    if not forward_hooks(model) and not any(h.kind is Kind.PARAMETRIZATION for h in listed):
        return model, False, [], []
    try:
        baked = [h.owner for h in listed if h.plan is Plan.BAKE and isinstance(h.owner, nn.Module)]
        # The converted copy is checked against the hooked model on the example, which the
        # exporter traces; check_parity proves the ONNX file on more inputs.
        copy = deepcopy_model(model, "export_onnx", share_tensors=True, own=baked)
        return convert_in_place(copy, example, second_input=False), True, [], []
    except UnconvertibleHookError as exc:
        if exporter != "dynamo":
            raise UnconvertibleHookError(exc.blockers, note="exporter='dynamo' exports the hooked model "
                                         "itself, running these hooks inline") from None
        inline = exc.blockers
    named = ", ".join(f"{b.path or '<root>'} {b.name}" for b in inline[:4]) + (", ..." if len(inline) > 4 else "")
    note = (f"exported the hooked model itself: {len(inline)} hook(s) cannot become modules ({named}); the "
            f"dynamo exporter ran them inline")
    return deepcopy_model(model, "export_onnx", share_tensors=True), False, inline, [note]


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = False,
    opset: int | None = None,
    exporter: Literal["dynamo", "legacy"] = "dynamo",
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export a model, hooks and all, to ONNX.

    A model that still has forward hooks is converted first (a copy that shares the
    unchanged weights; the model you pass keeps its hooks and tensors), and the copy is
    checked against the hooked model on ``example_inputs``; :func:`check_parity` proves
    the file on more inputs. The export runs in eval mode. The result is checked with
    ``onnx.checker``; weights go to an external ``.data`` file when the model is over
    2 GB. Files appear at ``path`` only once complete.

    Args:
        model: the model (hooked or already converted).
        example_inputs: a tuple of positional inputs.
        path: the ``.onnx`` file to write.
        dynamic_batch: make the first dimension of every input and output dynamic.
        opset: the ONNX opset; the exporter's default if ``None``.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``) or ``"legacy"``.
        progress: called as ``progress(done, total)`` as the phases end (converted;
            exported and written; checked and in place).

    Returns:
        An :class:`ExportResult`: opset, node counts per op type, random ops, files.

    Raises:
        InvalidArgumentError: bad arguments.
        UnconvertibleHookError: a hook cannot be converted.
        ExportError: the exporter or ``onnx.checker`` failed; the message says which
            and suggests the other exporter where that may help.

    Example:
        >>> result = hw.export_onnx(hooked_vgg, (torch.randn(1, 3, 224, 224),), "vgg.onnx", dynamic_batch=True)
        >>> result.random_ops
        {'RandomUniformLike': 13}
    """
    import onnx

    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    example = check_example_inputs(example_inputs)
    if not example:
        raise InvalidArgumentError("export_onnx needs example_inputs: a tuple of positional inputs")
    if exporter not in ("dynamo", "legacy"):
        raise InvalidArgumentError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= 30):
        raise InvalidArgumentError(f"opset must be an ONNX opset number, got {opset!r}")
    target = Path(path)
    if target.suffix != ".onnx":
        raise InvalidArgumentError(f"path must end with .onnx, got {str(target)!r}")
    with file_errors(target, "write there"):
        if not target.parent.is_dir():
            raise InvalidArgumentError(f"folder {str(target.parent)!r} does not exist")
    start = time.perf_counter()
    step = progress or (lambda done, total: None)
    step(0, _PHASES)
    subject, converted, inline, notes = _subject(model, example, exporter)
    step(1, _PHASES)
    report = conversion_report(subject)
    with private_folder(target) as tmpdir:
        tmp = tmpdir / target.name
        with eval_mode(subject), torch.no_grad():  # some models trace differently with autograd on (T5, Swin)
            try:
                if exporter == "dynamo":
                    proto, inputs = _dynamo_export(subject, example, tmp, dynamic_batch=dynamic_batch, opset=opset)
                else:
                    proto, inputs = _legacy_export(subject, example, tmp, dynamic_batch=dynamic_batch, opset=opset)
            except HookwrapError:
                raise
            except Exception as exc:
                odd = _odd_outputs(subject, example)
                hint = "" if odd else _other_exporter(subject, example, exporter)
                raise ExportError(_explain(exc, exporter, odd) + hint) from exc
        step(2, _PHASES)
        if not proto.graph.output:
            raise ExportError(f"the exported graph has no outputs: {type(model).__name__} returned no tensor for "
                              f"example_inputs; check what the model returns")
        try:
            onnx.checker.check_model(proto if exporter == "dynamo" else str(tmp), full_check=False)
        except Exception as exc:
            raise ExportError(f"onnx.checker rejected the exported model: {exc}") from exc
        written = sorted(tmpdir.iterdir(), key=lambda p: (p.name == target.name, p.name))
        files: list[Path] = []
        for item in written:  # data files first, the .onnx last: it names them
            dest = target.parent / item.name
            commit(item, dest)
            files.append(dest)
        fsync_dir(target.parent)
    step(_PHASES, _PHASES)
    counts = Counter(node.op_type for node in all_nodes(proto))
    opset_version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    random = random_ops_of(proto)
    remember(target, random, len(files) > 1)
    return ExportResult(
        path=target, exporter=exporter, opset=opset_version, node_counts=dict(counts),
        random_ops=random, files=files, external_data=len(files) > 1,
        input_names=inputs,
        output_names=[o.name for o in proto.graph.output], dynamic_batch=dynamic_batch,
        converted=converted, seconds=time.perf_counter() - start, report=report, inline_hooks=inline, notes=notes,
    )
