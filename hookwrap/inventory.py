"""List every hook on a model: :func:`inventory`.

PyTorch keeps hooks in private dictionaries on each module, on each tensor and in
``torch.nn.modules.module``'s global tables, and offers no public way to list them.
:func:`inventory` reads all of them (read-only) and says, for each hook, where it is,
what kind it is, where it comes from, whether it pickles and what ``convert`` will do.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_mod
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import (
    SpectralNorm,
    SpectralNormLoadStateDictPreHook,
    SpectralNormStateDictHook,
)
from torch.nn.utils.weight_norm import WeightNorm

from . import hooks as _hooks
from ._fs import write_json
from ._torch import unwrap_hook
from .errors import InvalidArgumentError
from .registry import find_converter
from .report import ItemList, Plan

__all__ = [
    "HookInfo",
    "Inventory",
    "list_hooks",
    "KINDS",
    "FORWARD_KINDS",
    "ORIGINS",
    "PLANS",
    "static_plan",
    "origin_of",
    "name_of",
    "forward_hooks",
    "serves_call_options",
]

KINDS = (
    "forward_pre", "forward", "backward_pre", "backward", "state_dict_pre", "state_dict",
    "load_state_dict_pre", "load_state_dict_post", "global_forward_pre", "global_forward",
    "global_backward_pre", "global_backward", "tensor",
)
FORWARD_KINDS = frozenset({"forward_pre", "forward", "global_forward_pre", "global_forward"})
GRAD_KINDS = frozenset({"backward_pre", "backward", "global_backward_pre", "global_backward", "tensor"})
ORIGINS = ("hookwrap", "prune", "weight_norm", "spectral_norm", "quantization", "user")
PLANS = tuple(p.value for p in Plan)
GLOBAL_PATH = "<global>"

# (kind, attribute on nn.Module) in the order PyTorch uses them around a call.
_MODULE_DICTS = (
    ("forward_pre", "_forward_pre_hooks"),
    ("forward", "_forward_hooks"),
    ("backward_pre", "_backward_pre_hooks"),
    ("backward", "_backward_hooks"),
    ("state_dict_pre", "_state_dict_pre_hooks"),
    ("state_dict", "_state_dict_hooks"),
    ("load_state_dict_pre", "_load_state_dict_pre_hooks"),
    ("load_state_dict_post", "_load_state_dict_post_hooks"),
)
_GLOBAL_DICTS = (
    ("global_forward_pre", "_global_forward_pre_hooks"),
    ("global_forward", "_global_forward_hooks"),
    ("global_backward_pre", "_global_backward_pre_hooks"),
    ("global_backward", "_global_backward_hooks"),
)
_TENSOR_DICTS = ("_backward_hooks", "_post_accumulate_grad_hooks")

# Libraries whose hooks we name by package when we meet them.
_KNOWN_LIBRARIES = frozenset({
    "accelerate", "transformers", "peft", "deepspeed", "timm", "torchvision", "captum",
    "torchinfo", "fairscale", "lightning", "pytorch_lightning", "torchao", "bitsandbytes",
    "hookwrap",
})


@dataclass(frozen=True)
class HookInfo:
    """One registered hook.

    ``path`` is the module path (``""`` the root, ``"<global>"`` a global hook; for a
    tensor hook, the parameter or buffer name). ``plan`` is what :func:`hookwrap.convert`
    does with it and ``reason`` says why. ``hook``, ``owner`` and ``dict_name`` locate
    the hook itself and are not part of :meth:`to_dict`.
    """

    path: str
    kind: str
    name: str
    hook_id: int
    with_kwargs: bool
    always_call: bool
    origin: str
    picklable: bool
    plan: Plan
    reason: str
    hook: Any = field(repr=False, compare=False)
    owner: Any = field(default=None, repr=False, compare=False)
    dict_name: str = field(default="", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "kind": self.kind, "name": self.name, "hook_id": self.hook_id,
            "with_kwargs": self.with_kwargs, "always_call": self.always_call,
            "origin": self.origin, "picklable": self.picklable, "plan": str(self.plan),
            "reason": self.reason,
        }

    @property
    def is_forward(self) -> bool:
        """True for hooks that run on the forward path (and so change outputs)."""
        return self.kind in FORWARD_KINDS

    @property
    def is_model_machinery(self) -> bool:
        """True for a forward hook that the model's own library installed to serve a call
        option (transformers' output capturing): it stays where it is, and a model that
        carries it saves, loads and converts like one without hooks."""
        return self.kind in FORWARD_KINDS and self.path != GLOBAL_PATH and self.plan is Plan.KEEP

    def container(self) -> dict:
        """The dictionary PyTorch keeps this hook in."""
        if self.owner is None:
            return getattr(_module_mod, self.dict_name)
        return getattr(self.owner, self.dict_name)


class Inventory(ItemList[HookInfo]):
    """A sequence of :class:`HookInfo`; prints as a table, serializes with ``to_json``."""

    def __init__(self, items: Sequence[HookInfo], model_name: str = "") -> None:
        super().__init__(items)
        self.model_name = model_name

    def _new(self, items: list[HookInfo]) -> Inventory:
        return Inventory(items, self.model_name)

    def where(self, *, kind: str | None = None, plan: str | None = None, origin: str | None = None,
              path: str | None = None) -> Inventory:
        """The hooks that match every given field."""
        items = [
            h for h in self._items
            if (kind is None or h.kind == kind) and (plan is None or h.plan == plan)
            and (origin is None or h.origin == origin) and (path is None or h.path == path)
        ]
        return Inventory(items, self.model_name)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            "by_kind": dict(Counter(h.kind for h in self._items)),
            "by_plan": dict(Counter(str(h.plan) for h in self._items)),
            "by_origin": dict(Counter(h.origin for h in self._items)),
        }

    def summary(self) -> str:
        plans = ", ".join(f"{n} {k}" for k, n in sorted(self.counts()["by_plan"].items()))
        return f"{len(self._items)} hook(s) on {self.model_name or 'the model'}" + (f": {plans}" if plans else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "count": len(self._items),
            "hooks": [h.to_dict() for h in self._items],
            **self.counts(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The inventory as JSON; also written to ``path`` if given."""
        return write_json(self.to_dict(), path, indent)

    def rows(self) -> list[list[str]]:
        """Table rows (strings) with the header first; used by ``str()`` and the CLI."""
        rows = [["path", "kind", "name", "origin", "flags", "pickle", "plan", "reason"]]
        for h in self._items:
            flags = ",".join(f for f, on in (("kwargs", h.with_kwargs), ("always", h.always_call)) if on)
            rows.append([
                h.path if h.path else "<root>", h.kind, h.name, h.origin, flags or "-",
                "yes" if h.picklable else "no", h.plan, h.reason,
            ])
        return rows

    def __str__(self) -> str:
        title = f"{len(self._items)} hook(s)" + (f" on {self.model_name}" if self.model_name else "")
        if not self._items:
            return title
        rows = self.rows()
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(len(rows[0]) - 1)]
        lines = [title]
        for n, row in enumerate(rows):
            cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths)]
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + row[-1])
            if n == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Inventory({len(self._items)} hooks)"


def name_of(hook: Any) -> str:
    """The hook's qualified name: ``DropoutHook.hook``, ``main.<locals>.<lambda>``, ``L1Unstructured``."""
    target = unwrap_hook(hook)
    qual = getattr(target, "__qualname__", None)
    if isinstance(qual, str) and not isinstance(target, type):
        return qual
    return type(target).__qualname__


def origin_of(hook: Any) -> str:
    """Where a hook comes from: hookwrap, prune, weight_norm, spectral_norm, quantization,
    another known library (by package name), ``torch`` for other PyTorch internals, or user."""
    target = unwrap_hook(hook)
    owner = getattr(target, "__self__", None)
    for obj in (target, owner):
        if isinstance(obj, _hooks.Hook):
            return "hookwrap"
        if isinstance(obj, prune.BasePruningMethod):
            return "prune"
        if isinstance(obj, WeightNorm):
            return "weight_norm"
        if isinstance(obj, (SpectralNorm, SpectralNormStateDictHook, SpectralNormLoadStateDictPreHook)):
            return "spectral_norm"
    module_name = getattr(target, "__module__", None) or type(target).__module__ or ""
    if module_name.startswith(("torch.ao.quantization", "torch.quantization", "torch.ao.nn")):
        return "quantization"
    top = module_name.split(".")[0]
    if top in _KNOWN_LIBRARIES:
        return top
    if top == "torch":
        return "torch"
    return "user"


class _Budget(io.RawIOBase):
    """A write-only sink that stops pickling after a byte budget."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(b)
        self.left -= n
        if self.left < 0:
            raise _TooBig
        return n


class _TooBig(Exception):
    pass


def _picklable(hook: Any, cache: dict[tuple[int, int], bool]) -> bool:
    func = getattr(hook, "__func__", hook)
    key = (id(func), id(getattr(hook, "__self__", None)))
    if key in cache:
        return cache[key]
    qual = getattr(func, "__qualname__", "")
    if isinstance(qual, str) and ("<lambda>" in qual or "<locals>" in qual):
        result = False
    else:
        try:
            pickle.Pickler(_Budget(16 << 20), protocol=pickle.HIGHEST_PROTOCOL).dump(hook)
            result = True
        except _TooBig:
            result = True  # 16 MB pickled without error: big, but picklable as far as we looked
        except Exception:
            result = False
    cache[key] = result
    return result


CAPTURE_REASON = "captured from example_inputs (hw.inventory(model, example_inputs) tells the outcome)"

CALL_OPTION_REASON = (
    "transformers' output-capturing hook: it collects hidden states and attentions when the model is called "
    "with output_hidden_states=True or output_attentions=True, and does nothing otherwise. It is the model's own "
    "machinery (transformers installs it again on a loaded model), so it stays")


def serves_call_options(hook: Any) -> bool:
    """True for a hook a library installs to serve call options of the model's own forward:
    transformers' output-capturing hooks (``transformers.utils.output_capturing``)."""
    target = unwrap_hook(hook)
    module_name = getattr(target, "__module__", None) or ""
    return module_name.startswith("transformers.") and getattr(target, "__name__", "") == "output_capturing_hook"


GLOBAL_REASON = ("global hook: it belongs to the process, not to the model, and stays registered; "
                 "convert(..., global_hooks='convert') turns it into wrappers and removes it from the process")


def static_plan(kind: str, origin: str, hook: Any, owner: Any) -> tuple[Plan, str]:
    """What convert does with a hook, as far as it is known without running the model
    (rules in order, first match wins). A hook that must be captured gets ``CONVERT`` with
    :data:`CAPTURE_REASON`; running ``example_inputs`` decides the rest (``hookwrap.plan``)."""
    if kind.startswith("global"):
        return Plan.KEEP, GLOBAL_REASON
    if kind in GRAD_KINDS:
        return Plan.STRIP, "gradient hook: does not change forward outputs"
    if kind in FORWARD_KINDS:
        return _forward_plan(kind, origin, hook, owner)
    if origin == "spectral_norm":
        return Plan.BAKE, "part of spectral_norm: removed with remove_spectral_norm"
    return Plan.KEEP, "state-dict hook: not on the forward path, left in place by convert"


def _forward_plan(kind: str, origin: str, hook: Any, owner: Any) -> tuple[Plan, str]:
    if isinstance(owner, torch.jit.ScriptModule):
        return Plan.UNSUPPORTED, "hook on a TorchScript module, whose forward cannot be wrapped"
    target = unwrap_hook(hook)
    if origin == "hookwrap":
        return Plan.CONVERT, f"hookwrap hook -> {getattr(target, '__self__', target)!r}"
    conv = find_converter(target)
    if conv is not None:
        return Plan.CONVERT, f"registered converter for {conv.label} -> {conv.wrapper.__name__}"
    baked = {"prune": "pruning mask: made permanent with torch.nn.utils.prune.remove",
             "weight_norm": "weight_norm: made permanent with torch.nn.utils.remove_weight_norm",
             "spectral_norm": "spectral_norm: made permanent with torch.nn.utils.remove_spectral_norm"}
    if origin in baked:
        return Plan.BAKE, baked[origin]
    if origin == "quantization":
        return Plan.STRIP, "quantization observer: removed"
    if serves_call_options(target):
        return Plan.KEEP, CALL_OPTION_REASON
    return Plan.CONVERT, CAPTURE_REASON


def _flags(kind: str, hook_id: int, owner: Any) -> tuple[bool, bool]:
    if kind == "forward_pre":
        return hook_id in owner._forward_pre_hooks_with_kwargs, False
    if kind == "forward":
        return hook_id in owner._forward_hooks_with_kwargs, hook_id in owner._forward_hooks_always_called
    if kind == "global_forward":
        return (
            hook_id in _module_mod._global_forward_hooks_with_kwargs,
            hook_id in _module_mod._global_forward_hooks_always_called,
        )
    return False, False


def forward_hooks(model: nn.Module) -> list[HookInfo]:
    """The forward-path hooks that would run on ``model`` and change what it computes: all
    but the model's own machinery (:attr:`HookInfo.is_model_machinery`). A fast check first."""
    if not (_module_mod._global_forward_hooks or _module_mod._global_forward_pre_hooks) and not any(
        m._forward_hooks or m._forward_pre_hooks for m in model.modules()
    ):
        return []
    return [h for h in list_hooks(model) if h.kind in FORWARD_KINDS and not h.is_model_machinery]


def list_hooks(model: nn.Module, *, include_global: bool = True) -> Inventory:
    """Every hook on ``model``, its submodules, its parameters and buffers, and globally,
    with the plan known without running the model (``hw.inventory`` adds the outcome of
    running example inputs).

    Args:
        model: the model to inspect; it is not changed.
        include_global: also list global module hooks (``"<global>"``), which apply to
            every module in the process.

    Returns:
        An :class:`Inventory`: a sequence of :class:`HookInfo` in the order PyTorch runs
        them (global hooks first, then modules in ``named_modules()`` order).

    Raises:
        InvalidArgumentError: ``model`` is not an ``nn.Module``.

    Example:
        >>> inv = hw.inventory(model)
        >>> print(inv)                      # a table
        >>> [h.path for h in inv.where(kind="forward")]
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"list_hooks needs an nn.Module, got {type(model).__name__}")
    cache: dict[tuple[int, int], bool] = {}
    items: list[HookInfo] = []

    def add(path: str, kind: str, hook_id: int, hook: Any, owner: Any, dict_name: str) -> None:
        origin = origin_of(hook)
        with_kwargs, always = _flags(kind, hook_id, owner)
        plan, reason = static_plan(kind, origin, hook, owner)
        items.append(HookInfo(
            path=path, kind=kind, name=name_of(hook), hook_id=hook_id, with_kwargs=with_kwargs,
            always_call=always, origin=origin, picklable=_picklable(hook, cache), plan=plan,
            reason=reason, hook=hook, owner=owner, dict_name=dict_name,
        ))

    if include_global:
        for kind, attr in _GLOBAL_DICTS:
            for hook_id, hook in list(getattr(_module_mod, attr).items()):
                add(GLOBAL_PATH, kind, hook_id, hook, None, attr)
    seen_tensors: set[int] = set()
    for path, mod in model.named_modules():
        for kind, attr in _MODULE_DICTS:
            for hook_id, hook in list(getattr(mod, attr, {}).items()):
                add(path, kind, hook_id, hook, mod, attr)
        tensors = list(mod._parameters.items()) + list(mod._buffers.items())
        for name, tensor in tensors:
            if tensor is None or id(tensor) in seen_tensors:
                continue
            seen_tensors.add(id(tensor))
            for attr in _TENSOR_DICTS:
                for hook_id, hook in list((getattr(tensor, attr, None) or {}).items()):
                    add(f"{path}.{name}" if path else name, "tensor", hook_id, hook, tensor, attr)
    return Inventory(items, type(model).__name__)
