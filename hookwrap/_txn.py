"""Snapshots that make model-changing operations transactional.

A :class:`Snapshot` records, for every module of a model, its class, its attribute
dictionary and the *contents* of every container in it (parameters, buffers, children,
hook dictionaries), plus the global module-hook dictionaries and the hook dictionaries
of every parameter and buffer. :meth:`Snapshot.restore` puts all of that back in place,
mutating the original containers rather than replacing them, so hook handles that users
hold (they keep weak references to those dictionaries) stay valid.

Tensor *values* are not copied: operations that write tensor data (``load``) validate
everything before the first write instead.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_mod

GLOBAL_HOOK_DICTS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)

_TENSOR_HOOK_ATTRS = ("_backward_hooks", "_post_accumulate_grad_hooks")


def _container_state(value: Any) -> Any:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, set):
        return set(value)
    return None


def _restore_container(obj: Any, saved: Any) -> None:
    if isinstance(obj, dict):
        obj.clear()
        obj.update(saved)
    elif isinstance(obj, set):
        obj.clear()
        obj.update(saved)


class Snapshot:
    """Everything needed to put a model's structure and hooks back as they were."""

    def __init__(self, model: nn.Module, modules: list[nn.Module] | None = None) -> None:
        self._modules: list[tuple[nn.Module, type, dict[str, Any], list[tuple[Any, Any]]]] = []
        self._param_data: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._tensor_hooks: list[tuple[torch.Tensor, str, Any, Any]] = []
        seen_tensors: set[int] = set()
        for mod in (model.modules() if modules is None else modules):
            attrs = dict(mod.__dict__)
            containers = []
            for value in attrs.values():
                state = _container_state(value)
                if state is not None:
                    containers.append((value, state))
            self._modules.append((mod, mod.__class__, attrs, containers))
            for tensor in list(mod._parameters.values()) + list(mod._buffers.values()):
                if tensor is None or id(tensor) in seen_tensors:
                    continue
                seen_tensors.add(id(tensor))
                if isinstance(tensor, nn.Parameter):
                    self._param_data.append((tensor, tensor.data))
                for attr in _TENSOR_HOOK_ATTRS:
                    hooks = getattr(tensor, attr, None)
                    self._tensor_hooks.append(
                        (tensor, attr, hooks, None if hooks is None else list(hooks.items()))
                    )
        self._globals = [
            (getattr(_module_mod, name), list(getattr(_module_mod, name).items()))
            for name in GLOBAL_HOOK_DICTS
        ]

    def restore(self) -> None:
        """Put every recorded container, attribute, class and tensor back."""
        for obj, saved in self._globals:
            _restore_container(obj, saved)
        for mod, cls, attrs, containers in self._modules:
            for obj, saved in containers:
                _restore_container(obj, saved)
            current = mod.__dict__
            for key in [k for k in current if k not in attrs]:
                del current[key]
            for key, value in attrs.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value
            if mod.__class__ is not cls:
                mod.__class__ = cls
        with torch.no_grad():
            for param, data in self._param_data:
                if param.data.data_ptr() != data.data_ptr() or param.data.shape != data.shape:
                    param.data = data
        for tensor, attr, hooks, items in self._tensor_hooks:
            if hooks is not None:
                _restore_container(hooks, items)
            if getattr(tensor, attr, None) is not hooks:
                setattr(tensor, attr, hooks)


_MISSING = object()


@contextlib.contextmanager
def transaction(model: nn.Module, modules: list[nn.Module] | None = None) -> Iterator[Snapshot]:
    """Run a block that changes ``model``; if it raises, undo every change and re-raise.

    ``modules`` limits the snapshot to the modules the block may change (default: all).
    """
    snap = Snapshot(model, modules)
    try:
        yield snap
    except BaseException:
        snap.restore()
        raise


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run a block that only reads ``model`` (a reference run), then put back whatever the
    model's own forward changed in its structure: caches it filled, attributes it set."""
    snap = Snapshot(model)
    try:
        yield
    finally:
        snap.restore()


def deepcopy_model(model: nn.Module, what: str, *, share_tensors: bool = False,
                   own: Iterable[nn.Module] = ()) -> nn.Module:
    """``copy.deepcopy(model)`` that also copes with weight-transform hooks.

    With ``share_tensors=True`` the copy's modules, hooks and attributes are new but its
    parameters and buffers are the original tensor objects: a cheap copy for work that
    changes the model's structure but never its weights. The tensors of the modules in
    ``own`` (and of their submodules) are copied all the same: work that changes those
    (baking a weight transform) then leaves the original alone.

    Pruning, ``weight_norm`` and ``spectral_norm`` leave a computed, non-leaf tensor as a
    plain attribute (``module.weight``), and models such as timm's LeViT keep non-leaf
    tensors in cache dictionaries after a grad-enabled forward; ``copy.deepcopy`` refuses
    them (pytorch/pytorch#103001). Such tensors are recomputed when needed, so the copy
    gets detached clones of them and the original keeps its own.

    Raises:
        HookwrapError: the model cannot be copied; the message suggests ``inplace=True``.
    """
    from .errors import HookwrapError

    memo: dict[int, Any] = {}
    if share_tensors:
        for tensor in [*model.parameters(), *model.buffers()]:
            memo[id(tensor)] = tensor
        for module in own:  # their tensors will be changed in the copy (baking): copy those, the
            # parametrizations' originals included, which remove_parametrizations writes with set_()
            for tensor in [*module.parameters(), *module.buffers()]:
                memo.pop(id(tensor), None)
    for mod in model.modules():
        for value in mod.__dict__.values():
            _detach_non_leaves(value, memo, depth=4)
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:
        raise HookwrapError(
            f"{what} works on a deep copy, and {type(model).__name__} could not be copied "
            f"({type(exc).__name__}: {exc}); pass inplace=True to change the model itself"
        ) from exc


def _detach_non_leaves(value: Any, memo: dict[int, Any], *, depth: int) -> None:
    """Put a detached clone of every non-leaf tensor in ``value`` (a module attribute, or the
    dicts, lists and tuples in it, as deep as ``depth``) into the deepcopy ``memo``.

    Such tensors are caches that a forward pass left behind (timm's attention-bias caches,
    weight-transform results) and ``copy.deepcopy`` refuses them."""
    if isinstance(value, torch.Tensor):
        if not value.is_leaf and id(value) not in memo:
            memo[id(value)] = value.detach().clone()
        return
    if depth <= 0 or isinstance(value, nn.Module):
        return
    if isinstance(value, dict):
        items: Any = list(value.values())[:10_000]
    elif isinstance(value, (list, tuple)):
        items = list(value)[:10_000]
    else:
        return
    for item in items:
        _detach_non_leaves(item, memo, depth=depth - 1)
