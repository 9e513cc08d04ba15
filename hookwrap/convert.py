"""``convert``: a model with no forward-path hooks left, computing the same thing.

How each hook is recognised (first match wins):

1. a hookwrap hook object (``hw.hooks.*``): becomes the wrapper it names;
2. a converter registered with ``hw.register_converter``;
3. a PyTorch utility: pruning, hook-based ``weight_norm`` and ``spectral_norm`` are
   baked; quantization observers are stripped;
4. capture (see :mod:`hookwrap.capture`): observers are stripped, known patterns become
   plain modules, anything else a ``CapturedHook``.

Backward and tensor hooks do not change forward outputs: they are stripped.
State-dict hooks are kept. Wrappers run in exactly the order PyTorch calls hooks:
global pre-hooks, the module's pre-hooks (``prepend=True`` ones first), ``forward``,
global forward hooks, the module's forward hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree

from . import wrappers as W
from ._torch import first_difference, inputs_like, seeded_run
from ._txn import deepcopy_model, transaction
from .capture import Call, Outcome, Site, convert_site, record
from .errors import Blocker, HookwrapError, InvalidArgumentError, UnconvertibleHookError
from .hooks import Hook
from .inventory import FORWARD_KINDS, GLOBAL_PATH, GRAD_KINDS, HookInfo, _unwrap, inventory
from .registry import find_converter
from .report import Action, attach_report
from .strip import bake_hook, remove_hook, without_hooks

__all__ = ["convert", "convert_in_place", "check_example_inputs"]

_NOT_HOSTS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def check_example_inputs(example_inputs: Any, *, what: str = "example_inputs") -> tuple | None:
    """``None`` or a tuple of positional inputs; anything else is a usage error."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Tensor):
        raise InvalidArgumentError(
            f"{what} must be a tuple of positional inputs, like torch.onnx.export takes; "
            f"got a single tensor: pass ({what[:1]},) i.e. (x,) instead of x"
        )
    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise InvalidArgumentError(f"{what} must be a tuple of positional inputs, got {type(example_inputs).__name__}")
    return example_inputs


def _batch_size(example_inputs: tuple | None) -> int | None:
    if not example_inputs:
        return None
    for leaf in _pytree.tree_leaves(example_inputs):
        if isinstance(leaf, Tensor) and leaf.dim() >= 1:
            return int(leaf.shape[0])
    return None


class _Plan:
    """Everything convert decided, before it changes anything."""

    def __init__(self) -> None:
        self.pre: dict[int, list[W.Wrapper]] = {}
        self.post: dict[int, list[W.Wrapper]] = {}
        self.hosts: dict[int, nn.Module] = {}
        self.bake: list[HookInfo] = []
        self.remove: list[HookInfo] = []
        self.actions: list[Action] = []
        self.blockers: list[Blocker] = []
        # the hooked model's outputs on the end-to-end check's inputs, by index
        self.expected: dict[int, Any] = {}

    def place(self, host: nn.Module, position: str, wrapper: W.Wrapper) -> None:
        self.hosts[id(host)] = host
        (self.pre if position == "pre" else self.post).setdefault(id(host), []).append(wrapper)


def _position(kind: str) -> str:
    return "pre" if kind in ("forward_pre", "global_forward_pre") else "post"


def _wrapper_for_known(info: HookInfo, host: nn.Module) -> tuple[W.Wrapper | None, str, str]:
    """(wrapper, detail, problem) for hookwrap hooks and registered converters."""
    target = _unwrap(info.hook)
    owner = getattr(target, "__self__", target)
    if info.origin == "hookwrap" and isinstance(owner, Hook):
        made: W.Wrapper = owner.to_module()
        return made, f"hookwrap hook -> {made!r}", ""
    conv = find_converter(target)
    if conv is None:
        return None, "", ""
    try:
        wrapper = conv.build(target, host)
    except Exception as exc:
        return None, "", f"the converter registered for {conv.label} raised {type(exc).__name__}: {exc}"
    if not isinstance(wrapper, conv.wrapper) or not isinstance(wrapper, W.Wrapper):
        return None, "", (
            f"the converter registered for {conv.label} returned {type(wrapper).__name__}, "
            f"not the declared wrapper type {conv.wrapper.__name__}"
        )
    return wrapper, f"registered converter for {conv.label} -> {wrapper!r}", ""


def _global_hosts(model: nn.Module, info: HookInfo, calls: dict | None) -> list[tuple[str, nn.Module]]:
    """The modules a global hook fired on (when recorded), else every module."""
    named = [(p, m) for p, m in model.named_modules() if not isinstance(m, _NOT_HOSTS) and not _in_wrapper(p)]
    if calls is None:
        return named
    return [(p, m) for p, m in named if (p, info.kind, info.hook_id) in calls]


def _in_wrapper(path: str) -> bool:
    parts = path.split(".")
    return W.PRE in parts or W.POST in parts


def _plan(model: nn.Module, example_inputs: tuple | None) -> _Plan:
    plan = _Plan()
    inv = inventory(model)
    modules = dict(model.named_modules())
    batch = _batch_size(example_inputs)

    # Which forward hooks need a recording run: everything not known without running,
    # and global hooks (to learn which modules they fire on).
    to_record: list[Site] = []
    for info in inv:
        if info.kind not in FORWARD_KINDS or info.plan in ("bake", "unsupported"):
            continue
        if info.origin == "quantization":
            continue
        known = info.origin == "hookwrap" or find_converter(_unwrap(info.hook)) is not None
        if info.path == GLOBAL_PATH or not known:
            host = modules.get(info.path, model)
            to_record.append(Site(info, info.path, host, _position(info.kind), info.with_kwargs))
    calls: dict[tuple[str, str, int], list[Call]] | None = None
    if to_record and example_inputs is not None:
        try:
            calls, plan.expected[0] = record(model, example_inputs, to_record, seed=CHECK_SEEDS[0])
        except Exception as exc:
            raise HookwrapError(
                f"running example_inputs through {type(model).__name__} failed "
                f"({type(exc).__name__}: {exc}); pass inputs the model accepts"
            ) from exc

    def decide(info: HookInfo, path: str, host: nn.Module) -> None:
        position = _position(info.kind)
        wrapper, detail, problem = _wrapper_for_known(info, host)
        if problem:
            plan.blockers.append(Blocker(path, info.kind, info.name, problem + ".",
                                         "fix the converter so it returns its declared wrapper type"))
            return
        if wrapper is not None:
            plan.place(host, position, wrapper)
            plan.actions.append(Action(path, info.kind, info.name, info.origin, "converted", detail,
                                       wrapper.kind, position))
            return
        site = Site(info, path, host, position, info.with_kwargs)
        outcome: Outcome = convert_site(
            site, None if calls is None else calls.get(site.key, []), batch=batch,
        )
        if outcome.action == "blocker":
            plan.blockers.append(Blocker(path, info.kind, info.name, outcome.detail, outcome.fix))
        elif outcome.action == "wrapper":
            assert outcome.wrapper is not None
            plan.place(host, position, outcome.wrapper)
            plan.actions.append(Action(path, info.kind, info.name, info.origin, "converted", outcome.detail,
                                       outcome.wrapper.kind, position))
        else:
            plan.actions.append(Action(path, info.kind, info.name, info.origin, "stripped", outcome.detail))

    for info in inv:
        if info.kind in FORWARD_KINDS:
            if info.plan == "unsupported":
                plan.blockers.append(Blocker(info.path, info.kind, info.name, info.reason + ".",
                                             "remove the hook or script the module after hooking"))
                continue
            plan.remove.append(info)
            if info.plan == "bake":
                plan.bake.append(info)
                continue
            if info.origin == "quantization":
                plan.actions.append(Action(info.path, info.kind, info.name, info.origin, "stripped",
                                           "quantization observer: removed"))
                continue
            if info.path == GLOBAL_PATH:
                for path, host in _global_hosts(model, info, calls):
                    decide(info, path, host)
            else:
                decide(info, info.path, modules[info.path])
        elif info.kind in GRAD_KINDS:
            plan.remove.append(info)
            plan.actions.append(Action(info.path, info.kind, info.name, info.origin, "stripped",
                                       "gradient hook: does not change forward outputs"))
        elif info.origin == "spectral_norm":
            plan.remove.append(info)
        else:
            plan.actions.append(Action(info.path, info.kind, info.name, info.origin, "kept",
                                       "state-dict hook: not on the forward path"))
    return plan


def _apply(model: nn.Module, plan: _Plan) -> None:
    for info in plan.bake:
        detail = bake_hook(info)
        plan.actions.append(Action(info.path, info.kind, info.name, info.origin, "baked", detail))
    baked = {id(i.hook) for i in plan.bake}
    for info in plan.remove:
        if id(info.hook) in baked:
            continue
        if info.origin == "spectral_norm" and info.kind not in FORWARD_KINDS:
            if info.hook_id in info.container():
                remove_hook(info)
            plan.actions.append(Action(info.path, info.kind, info.name, info.origin, "stripped",
                                       "part of spectral_norm: removed with it"))
            continue
        remove_hook(info)
    for key, host in plan.hosts.items():
        W.install(host, plan.pre.get(key, []), plan.post.get(key, []))
    left = [h for h in inventory(model) if h.kind in FORWARD_KINDS]
    if left:
        raise HookwrapError(
            "internal error: forward hooks remain after conversion: "
            + ", ".join(f"{h.path} [{h.kind}] {h.name}" for h in left)
        )


def convert(model: nn.Module, example_inputs: Sequence[Any] | None = None, *, inplace: bool = False) -> nn.Module:
    """Turn every forward-path hook of ``model`` into an explicit wrapper module.

    Args:
        model: the hooked model.
        example_inputs: a tuple of positional inputs (like ``torch.onnx.export`` takes).
            Needed for hooks that must be captured (functions, lambdas, closures); the
            model runs once on them in eval mode, and your RNG state is restored after.
        inplace: convert ``model`` itself instead of a deep copy.

    Global forward hooks become wrappers on every module they fired on and are then
    removed from the process (otherwise they would run twice on the converted model).

    Returns:
        A model with no forward-path hooks left. ``hw.conversion_report(result)`` says
        what happened to each hook.

    Raises:
        InvalidArgumentError: ``model`` is not a module or ``example_inputs`` is not a tuple.
        UnconvertibleHookError: one or more hooks cannot be converted; it lists all of
            them, and ``model`` is left exactly as it was.

    Example:
        >>> dropout_ = DropoutHook(0.2)
        >>> vgg.apply(dropout_.register_hook)
        >>> converted = hw.convert(vgg, (torch.randn(1, 3, 224, 224),))
        >>> converted.features[0].hookwrap_post[0]
        Dropout2d(p=0.2, always=True)
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"convert needs an nn.Module, got {type(model).__name__}")
    example = check_example_inputs(example_inputs)
    target = model if inplace else deepcopy_model(model, "convert")
    return convert_in_place(target, example)


def convert_in_place(target: nn.Module, example: tuple | None) -> nn.Module:
    """The work of :func:`convert` on ``target`` itself (transactional)."""
    plan = _plan(target, example)
    if plan.blockers:
        raise UnconvertibleHookError(plan.blockers)
    checks = _check_inputs(example)
    for i, (inputs, seed) in enumerate(checks):
        if i not in plan.expected:
            plan.expected[i] = _run(target, inputs, seed, "the hooked model")
    try:
        with transaction(target), torch.no_grad():
            _apply(target, plan)
            attach_report(target, plan.actions)
            for i, (inputs, seed) in enumerate(checks):
                difference = first_difference(_run(target, inputs, seed, "the converted model"), plan.expected[i])
                if difference is not None:
                    raise _Mismatch(i, difference)
    except _Mismatch as mismatch:  # the transaction has put target back as it was
        raise UnconvertibleHookError(_diagnose(target, plan, checks, mismatch)) from None
    return target


# The end-to-end check: the example inputs and a second input drawn like them, each run
# with torch's RNG seeded alike on both sides (stochastic wrappers draw what the hooks drew).
CHECK_SEEDS = (1234, 5678)


def _check_inputs(example: tuple | None) -> list[tuple[tuple, int]]:
    if not example:
        return []
    return [(example, CHECK_SEEDS[0]), (tuple(inputs_like(example, CHECK_SEEDS[1])), CHECK_SEEDS[1])]


def _run(model: nn.Module, inputs: tuple, seed: int, what: str) -> Any:
    try:
        return seeded_run(model, inputs, seed)
    except Exception as exc:
        raise HookwrapError(f"running {what} for convert's end-to-end check failed ({type(exc).__name__}: "
                            f"{exc}); pass example_inputs the model accepts") from exc


class _Mismatch(Exception):
    def __init__(self, index: int, difference: str) -> None:
        super().__init__(difference)
        self.index, self.difference = index, difference


_MAX_SINGLE_CHECKS = 64


def _diagnose(model: nn.Module, plan: _Plan, checks: list[tuple[tuple, int]], mismatch: _Mismatch) -> list[Blocker]:
    """Name the hooks at fault for a failed end-to-end check. Hooks that were stripped as
    observers are tried first: the hooked model is run without each of them (it is put
    back at once); one whose absence changes the outputs feeds the model's own forward."""
    inputs, seed = checks[mismatch.index]
    which = "the example inputs" if mismatch.index == 0 else "a second input drawn like the example"
    stripped_keys = {(a.path, a.kind, a.name) for a in plan.actions if a.action == "stripped"}
    observers = [h for h in plan.remove if (h.path, h.kind, h.name) in stripped_keys and h.kind in FORWARD_KINDS]
    at_fault: list[HookInfo] = []
    if observers:
        with without_hooks(observers):
            changed = first_difference(_run(model, inputs, seed, "the hooked model"), plan.expected[mismatch.index])
        if changed is not None:
            for info in observers[:_MAX_SINGLE_CHECKS]:
                with without_hooks([info]):
                    if first_difference(_run(model, inputs, seed, "the hooked model"), plan.expected[mismatch.index]):
                        at_fault.append(info)
    if at_fault:
        return [Blocker(
            h.path, h.kind, h.name,
            f"it returns None and changes no tensor, but the model's own forward reads back what it stores: "
            f"without it, {mismatch.difference.split(':')[0]} changes on {which}. A module cannot carry that side effect.",
            _TIMM_FIX if h.origin == "timm" else _TAP_FIX) for h in at_fault]
    converted = [a for a in plan.actions if a.action == "converted"]
    writers = [a for a in plan.actions if a.action == "stripped" and "Python state" in a.detail]
    return [Blocker(
        a.path, a.kind, a.name,
        f"it was stripped as an observer, but it changes Python state, and the converted model differs from "
        f"the hooked model on {which} ({mismatch.difference}): another hook may read what it stores.",
        _TAP_FIX) for a in writers] + [Blocker(
        a.path, a.kind, a.name,
        f"the converted model differs from the hooked model on {which} ({mismatch.difference}); the wrappers "
        f"reproduce each hook alone, so the hooks together do something else (state shared between calls, or "
        f"a hook that sees what another one did, or randomness from outside torch).",
        "make each hook a pure function of its own inputs (no state shared with other hooks or kept between "
        "calls), or export the hooked model itself with hw.export_onnx, whose dynamo exporter runs hooks inline") for a in converted] or [Blocker(
            "", "forward", type(model).__name__,
            f"the converted model differs from the hooked model on {which} ({mismatch.difference}).",
            "report this with the model and the hooks: it is a hookwrap bug")]


_TAP_FIX = ("make the hook return the value it stores (or compute it in forward), or export the hooked model "
            "itself with hw.export_onnx, whose dynamo exporter runs the hook inline")
_TIMM_FIX = ("this is timm's FeatureHooks (features_only with feature_cls='hook'): timm rebuilds these hooks "
             "whenever it creates the model, so save its weights as they are (safetensors.torch.save_model) and "
             "export it with hw.export_onnx, which exports the hooked model itself; or create the model with "
             "feature_cls='getter', which needs no hooks")
