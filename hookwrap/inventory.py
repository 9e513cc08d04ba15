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

from torch import nn
from torch.nn.modules import module as _module_mod
from torch.nn.utils import parametrize

from ._fs import write_json
from .errors import InvalidArgumentError
from .registry import SOURCES, HookRef, Source, source_for
from .report import FORWARD_KINDS, GRAD_KINDS, ItemList, Kind, Plan

__all__ = [
    "HookInfo",
    "Inventory",
    "list_hooks",
    "KINDS",
    "FORWARD_KINDS",
    "PLANS",
    "forward_hooks",
    "GLOBAL_PATH",
]

KINDS = tuple(k.value for k in Kind)
PLANS = tuple(p.value for p in Plan)
GLOBAL_PATH = "<global>"
assert GRAD_KINDS  # re-exported for callers of this module

# (kind, attribute on nn.Module) in the order PyTorch uses them around a call.
_MODULE_DICTS = (
    (Kind.FORWARD_PRE, "_forward_pre_hooks"),
    (Kind.FORWARD, "_forward_hooks"),
    (Kind.BACKWARD_PRE, "_backward_pre_hooks"),
    (Kind.BACKWARD, "_backward_hooks"),
    (Kind.STATE_DICT_PRE, "_state_dict_pre_hooks"),
    (Kind.STATE_DICT, "_state_dict_hooks"),
    (Kind.LOAD_STATE_DICT_PRE, "_load_state_dict_pre_hooks"),
    (Kind.LOAD_STATE_DICT_POST, "_load_state_dict_post_hooks"),
)
_GLOBAL_DICTS = (
    (Kind.GLOBAL_FORWARD_PRE, "_global_forward_pre_hooks"),
    (Kind.GLOBAL_FORWARD, "_global_forward_hooks"),
    (Kind.GLOBAL_BACKWARD_PRE, "_global_backward_pre_hooks"),
    (Kind.GLOBAL_BACKWARD, "_global_backward_hooks"),
)
_TENSOR_DICTS = ("_backward_hooks", "_post_accumulate_grad_hooks")


@dataclass(frozen=True)
class HookInfo:
    """One registered hook (or parametrization).

    ``path`` is the module path (``""`` the root, ``"<global>"`` a global hook; for a
    tensor hook, the parameter or buffer name); ``alias`` the name the user gave that
    module where a library wraps modules (a TransformerLens hook point's name). ``plan`` is
    what :func:`hookwrap.convert` does with it and ``reason`` says why; ``source`` is the
    rule of :mod:`hookwrap.registry` that decided. For a parametrization, ``tensor`` is
    the parametrized tensor's name. ``hook``, ``owner`` and ``dict_name`` locate the hook
    itself; they, and ``source``, are not part of :meth:`to_dict`.
    """

    path: str
    kind: Kind
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
    source: Source | None = field(default=None, repr=False, compare=False)
    alias: str | None = None
    tensor: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {
            "path": self.path, "kind": str(self.kind), "name": self.name, "hook_id": self.hook_id,
            "with_kwargs": self.with_kwargs, "always_call": self.always_call,
            "origin": self.origin, "picklable": self.picklable, "plan": str(self.plan),
            "reason": self.reason,
        }
        if self.alias:
            out["alias"] = self.alias
        if self.tensor:
            out["tensor"] = self.tensor
        return out

    @property
    def ref(self) -> HookRef:
        return HookRef(Kind(self.kind), self.hook, self.owner, self.tensor)

    @property
    def where(self) -> str:
        """The path to show people: the user's name for the module, with the module path
        when they differ."""
        path = self.path or "<root>"
        return f"{self.alias} (module {path})" if self.alias and self.alias != self.path else path

    @property
    def is_forward(self) -> bool:
        """True for hooks that run on the forward path (and so change outputs)."""
        return self.kind in FORWARD_KINDS

    @property
    def is_model_machinery(self) -> bool:
        """True for a forward hook that the model's own library installed to serve a call
        option (transformers' output capturing): it stays where it is, and a model that
        carries it saves, loads and converts like one without hooks."""
        return self.source is not None and self.source.machinery

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
    but those its own library installs again whenever it needs them (transformers' output
    capturing, TransformerLens' wiring). A fast check first."""
    if not (_module_mod._global_forward_hooks or _module_mod._global_forward_pre_hooks) and not any(
        m._forward_hooks or m._forward_pre_hooks for m in model.modules()
    ):
        return []
    return [h for h in list_hooks(model) if h.kind in FORWARD_KINDS
            and not (h.source is not None and h.source.reinstalled)]


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
    aliases: dict[int, str] = {}
    for rule in SOURCES:
        aliases.update(rule.aliases(model))

    def add(path: str, kind: Kind, hook_id: int, hook: Any, owner: Any, dict_name: str, tensor: str = "") -> None:
        ref = HookRef(kind, hook, owner, tensor)
        source = source_for(ref)
        plan, reason = source.plan(ref)
        with_kwargs, always = _flags(kind, hook_id, owner)
        items.append(HookInfo(
            path=path, kind=kind, name=source.name(ref), hook_id=hook_id, with_kwargs=with_kwargs,
            always_call=always, origin=source.origin_of(ref), picklable=_picklable(hook, cache), plan=plan,
            reason=reason, hook=hook, owner=owner, dict_name=dict_name, source=source,
            alias=aliases.get(id(owner)) or source.alias(ref),
            tensor=tensor,
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
        if parametrize.is_parametrized(mod):
            for index, (tensor, chain) in enumerate(mod.parametrizations.items()):
                add(path, Kind.PARAMETRIZATION, index, chain, mod, "parametrizations", tensor)
        tensors = list(mod._parameters.items()) + list(mod._buffers.items())
        for name, tensor in tensors:
            if tensor is None or id(tensor) in seen_tensors:
                continue
            seen_tensors.add(id(tensor))
            for attr in _TENSOR_DICTS:
                for hook_id, hook in list((getattr(tensor, attr, None) or {}).items()):
                    add(f"{path}.{name}" if path else name, Kind.TENSOR, hook_id, hook, tensor, attr)
    return Inventory(items, type(model).__name__)
