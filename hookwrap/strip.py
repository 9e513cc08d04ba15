"""Remove hooks: :func:`strip` for good, :func:`stripped` for the length of a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn
from torch.nn.modules import module as _module_mod

from ._txn import deepcopy_model, transaction
from .errors import HookwrapError, InvalidArgumentError
from .hooks import Where, select_modules
from .inventory import GLOBAL_PATH, KINDS, HookInfo, Inventory, list_hooks
from .report import Action, Kind, Plan, attach_report

__all__ = ["strip", "stripped", "without_hooks", "bake_hook", "remove_hook"]

# Flag dictionaries that PyTorch keys by hook id next to the hook dictionary itself.
_FLAG_DICTS = {
    "_forward_pre_hooks": ("_forward_pre_hooks_with_kwargs",),
    "_forward_hooks": ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"),
    "_global_forward_hooks": ("_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called"),
}


def _flag_dicts(info: HookInfo) -> list[dict]:
    names = _FLAG_DICTS.get(info.dict_name, ())
    holder = _module_mod if info.owner is None else info.owner
    return [getattr(holder, n) for n in names]


def remove_hook(info: HookInfo) -> None:
    """Unregister one hook (and its with_kwargs/always_call flags), like ``handle.remove()``."""
    info.container().pop(info.hook_id, None)
    for flags in _flag_dicts(info):
        flags.pop(info.hook_id, None)


def bake_hook(info: HookInfo) -> str:
    """Make a weight transform permanent the way its source in :mod:`hookwrap.registry` says:
    ``prune.remove``, ``remove_weight_norm``, ``remove_spectral_norm`` or
    ``remove_parametrizations(leave_parametrized=True)``.

    Returns:
        A description of what was baked, for the report.
    """
    if info.source is None:
        raise HookwrapError(f"{info.where}: {info.name} is not a weight transform hookwrap can bake")
    try:
        return info.source.bake(info.ref)
    except HookwrapError:
        raise
    except Exception as exc:
        raise HookwrapError(
            f"{info.where}: baking {info.origin} {info.name} failed ({type(exc).__name__}: {exc}); "
            f"strip(bake=False) removes the hook without baking"
        ) from exc


def _bakes(info: HookInfo) -> bool:
    """A weight transform whose baking removes it: its forward pre-hook, or a parametrization."""
    return info.plan is Plan.BAKE and (info.kind is Kind.FORWARD_PRE or info.kind is Kind.PARAMETRIZATION)


def _check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = frozenset(kinds)
    unknown = sorted(chosen - set(KINDS))
    if unknown:
        raise InvalidArgumentError(f"unknown hook kind(s) {unknown}; valid kinds: {', '.join(KINDS)}")
    return chosen


def select_hooks(model: nn.Module, *, where: Where | None, kinds: Iterable[str] | None) -> Inventory:
    """The hooks of ``model`` that ``where`` (module selection) and ``kinds`` select.

    Global hooks are selected only when ``where`` is ``None``: they belong to no module.
    A tensor hook belongs to the module that owns the tensor.
    """
    kind_set = _check_kinds(kinds)
    inv = list_hooks(model)
    module_ids: set[int] | None = None
    if where is not None:
        module_ids = {id(m) for _, m in select_modules(model, where)}
        tensor_ids = {
            id(t) for _, m in select_modules(model, where)
            for t in list(m._parameters.values()) + list(m._buffers.values()) if t is not None
        }
    items = []
    for info in inv:
        if kind_set is not None and info.kind not in kind_set:
            continue
        if module_ids is not None:
            if info.path == GLOBAL_PATH:
                continue
            if info.kind == "tensor" and id(info.owner) not in tensor_ids:
                continue
            if info.kind != "tensor" and id(info.owner) not in module_ids:
                continue
        items.append(info)
    return Inventory(items, inv.model_name)


def _strip_in_place(model: nn.Module, *, bake: bool, where: Where | None, kinds: Iterable[str] | None) -> list[Action]:
    actions: list[Action] = []
    selected = select_hooks(model, where=where, kinds=kinds)
    baked_ids: set[int] = set()
    if bake:
        for info in selected:
            if _bakes(info):
                detail = bake_hook(info)
                baked_ids.add(id(info.hook))
                actions.append(Action(info.path, info.kind, info.name, info.origin, "baked", detail))
    for info in selected:
        if id(info.hook) in baked_ids:
            continue
        if info.is_model_machinery or info.kind is Kind.PARAMETRIZATION:
            why = info.reason if info.is_model_machinery else (
                "a parametrization defines its tensor: strip(bake=True) makes it permanent; bake=False leaves it")
            actions.append(Action(info.path, info.kind, info.name, info.origin, "kept", why))
            continue
        if info.hook_id not in info.container():  # removed along with a baked hook
            actions.append(Action(info.path, info.kind, info.name, info.origin, "stripped",
                                  "removed together with the weight transform it belongs to"))
            continue
        remove_hook(info)
        detail = "removed"
        if _bakes(info):
            detail = "removed without baking: the weight keeps its last computed value"
        if info.path == GLOBAL_PATH:
            detail = "global hook removed from this process"
        actions.append(Action(info.path, info.kind, info.name, info.origin, "stripped", detail))
    return actions


def strip(
    model: nn.Module,
    *,
    inplace: bool = False,
    bake: bool = True,
    where: Where | None = None,
    kinds: Iterable[str] | None = None,
) -> nn.Module:
    """Remove hooks from a model.

    Args:
        model: the model.
        inplace: change ``model`` itself instead of a deep copy.
        bake: first make pruning, weight_norm and spectral_norm permanent with
            ``prune.remove``, ``remove_weight_norm`` and ``remove_spectral_norm``, so
            ``weight_orig``/masks/``_g``/``_v`` leave the ``state_dict``.
        where: only strip hooks of the modules this selects (see :func:`hookwrap.attach`).
        kinds: only strip these kinds (see ``hookwrap.inventory.KINDS``).

    Global hooks are process-wide: with ``where=None`` they are removed from the process
    (they would still change the returned model otherwise). Hooks that are the model's own
    machinery (transformers' output capturing, which serves ``output_hidden_states``) stay,
    and the report says so.

    Returns:
        The stripped model (``model`` itself when ``inplace``). What happened to each hook
        is in :func:`hookwrap.conversion_report`.

    Raises:
        InvalidArgumentError: bad ``model``, ``where`` or ``kinds``.
        HookwrapError: stripping failed; with ``inplace=True`` the model is left exactly
            as it was, hooks included.

    Example:
        >>> plain = hw.strip(model)          # model keeps its hooks
        >>> torch.save(plain, "plain.pt")
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"strip needs an nn.Module, got {type(model).__name__}")
    _check_kinds(kinds)
    target = model if inplace else deepcopy_model(model, "strip")
    with transaction(target):
        actions = _strip_in_place(target, bake=bake, where=where, kinds=kinds)
        attach_report(target, actions)
    return target


@contextlib.contextmanager
def stripped(
    model: nn.Module,
    *,
    where: Where | None = None,
    kinds: Iterable[str] | None = None,
) -> Iterator[nn.Module]:
    """Remove hooks for the duration of a ``with`` block, then put back the same hooks
    in the same order (same ids, so existing handles keep working).

    Nothing is baked. Hooks registered inside the block stay, after the restored ones.
    The model's own machinery (transformers' output capturing) stays in place throughout.

    Args:
        model: the model.
        where: only these modules' hooks (see :func:`hookwrap.attach`).
        kinds: only these kinds.

    Example:
        >>> with hw.stripped(model):
        ...     clean = model(x)              # no hooks run
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"stripped needs an nn.Module, got {type(model).__name__}")
    chosen = [h for h in select_hooks(model, where=where, kinds=kinds)
              if not h.is_model_machinery and h.kind is not Kind.PARAMETRIZATION]
    with without_hooks(chosen):
        yield model


@contextlib.contextmanager
def without_hooks(hooks: Iterable[HookInfo]) -> Iterator[None]:
    """Unregister ``hooks`` for a block, then put the same hooks back in the same order with
    the same ids (hooks registered inside the block stay, after the restored ones)."""
    selected = list(hooks)
    saved: dict[int, tuple[dict, list[tuple[Any, Any]]]] = {}
    for info in selected:
        for container in [info.container(), *_flag_dicts(info)]:
            if id(container) not in saved:
                saved[id(container)] = (container, list(container.items()))
    for info in selected:
        remove_hook(info)
    try:
        yield
    finally:
        for container, items in saved.values():
            original_ids = {k for k, _ in items}
            added = [(k, v) for k, v in container.items() if k not in original_ids]
            container.clear()
            container.update(items)
            container.update(added)
