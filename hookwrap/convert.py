"""``convert``: a model with no forward-path hooks left, computing the same thing.

:mod:`hookwrap.plan` decides what happens to each hook; this module carries the plan
out in one transaction, then proves it: the converted model is run against the hooked
one, end to end, on the example inputs and on a second input drawn like them, seeded
alike, and the whole output structure must be identical. A difference undoes everything
and raises :class:`~hookwrap.UnconvertibleHookError` naming the hooks at fault.

Wrappers run in exactly the order PyTorch calls hooks: global pre-hooks, the module's
pre-hooks (``prepend=True`` ones first), ``forward``, global forward hooks, the module's
forward hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from . import wrappers as W
from ._torch import first_difference, inputs_like, seeded_run
from ._txn import deepcopy_model, transaction
from .errors import Blocker, HookwrapError, InvalidArgumentError, UnconvertibleHookError
from .inventory import FORWARD_KINDS, HookInfo, list_hooks
from .plan import RECORD_SEED, ConversionPlan, Decision, GlobalHooks, check_example_inputs, plan_conversion
from .report import Action, Plan, attach_report
from .strip import bake_hook, remove_hook, without_hooks

__all__ = ["convert", "convert_in_place", "check_example_inputs"]

# The end-to-end check: the example inputs (run by the recording pass with RECORD_SEED when
# there was one) and a second input drawn like them, each run with torch's RNG seeded alike
# on both sides, so that stochastic wrappers draw exactly what the hooks drew.
CHECK_SEEDS = (RECORD_SEED, 5678)
_MAX_SINGLE_CHECKS = 64


def convert(model: nn.Module, example_inputs: Sequence[Any] | None = None, *, inplace: bool = False,
            global_hooks: GlobalHooks = "keep") -> nn.Module:
    """Turn every forward-path hook of ``model`` into an explicit wrapper module.

    Args:
        model: the hooked model.
        example_inputs: a tuple of positional inputs (like ``torch.onnx.export`` takes).
            Needed for hooks that must be captured (functions, lambdas, closures) and for
            the end-to-end check; the model runs on them in eval mode (your hooks are
            called), and your RNG state is restored after.
        inplace: convert ``model`` itself instead of a deep copy.
        global_hooks: ``"keep"`` (default): global module hooks belong to the process, so
            they are reported and stay registered (they still run on every module).
            ``"convert"``: turn them into wrappers on the modules they fired on and remove
            them from the process.

    Returns:
        A model with no forward-path hooks of its own left. ``hw.conversion_report(result)``
        says what happened to each hook.

    Raises:
        InvalidArgumentError: ``model`` is not a module or ``example_inputs`` is not a tuple.
        UnconvertibleHookError: one or more hooks cannot be converted, or the converted
            model does not compute what the hooked one does; it lists every hook at fault,
            and ``model`` is left exactly as it was.

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
    return convert_in_place(target, example, global_hooks=global_hooks)


def convert_in_place(target: nn.Module, example: tuple | None, *, global_hooks: GlobalHooks = "keep",
                     second_input: bool = True) -> nn.Module:
    """The work of :func:`convert` on ``target`` itself (transactional).

    ``second_input=False`` checks on the example inputs only: for ``export_onnx``, which
    traces the example and whose result ``check_parity`` proves on several inputs."""
    plan = plan_conversion(target, example, global_hooks=global_hooks)
    if plan.blockers:
        raise UnconvertibleHookError(plan.blockers)
    checks = _check_inputs(example)[: None if second_input else 1]
    expected = [plan.recorded_output if i == 0 and plan.recorded else _run(target, inputs, seed, "the hooked model")
                for i, (inputs, seed) in enumerate(checks)]
    try:
        with transaction(target), torch.no_grad():
            attach_report(target, _apply(target, plan))
            for i, (inputs, seed) in enumerate(checks):
                difference = first_difference(_run(target, inputs, seed, "the converted model"), expected[i])
                if difference is not None:
                    raise _Mismatch(i, difference)
    except _Mismatch as mismatch:  # the transaction has put target back as it was
        raise UnconvertibleHookError(_diagnose(target, plan, checks[mismatch.index], expected[mismatch.index],
                                               mismatch)) from None
    return target


def _apply(model: nn.Module, plan: ConversionPlan) -> list[Action]:
    """Bake, remove and install as the plan says; return what was done, hook by hook."""
    actions: list[Action] = []
    done: set[tuple[int, int]] = set()  # (hook dictionary, id): a global hook has one decision per host
    pre: dict[int, list[W.Wrapper]] = {}
    post: dict[int, list[W.Wrapper]] = {}
    hosts: dict[int, nn.Module] = {}
    for d in plan.decisions:
        key = (id(d.info.container()), d.info.hook_id)
        if d.plan is Plan.BAKE and d.info.kind in FORWARD_KINDS:
            actions.append(replace(d.action(), detail=bake_hook(d.info)))
            done.add(key)
            continue
        if d.plan is not Plan.KEEP and key not in done:
            if d.info.hook_id in d.info.container():  # spectral_norm's own hooks leave with it
                remove_hook(d.info)
            done.add(key)
        if d.plan is Plan.CONVERT and d.wrapper is not None and d.host is not None:
            hosts[id(d.host)] = d.host
            (pre if d.position == "pre" else post).setdefault(id(d.host), []).append(d.wrapper)
        actions.append(d.action())
    for host_id, host in hosts.items():
        W.install(host, pre.get(host_id, []), post.get(host_id, []))
    left = [h for h in list_hooks(model, include_global=False) if h.kind in FORWARD_KINDS]
    if left:
        raise HookwrapError("internal error: forward hooks remain after conversion: "
                            + ", ".join(f"{h.path} [{h.kind}] {h.name}" for h in left))
    return actions


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


def _diagnose(model: nn.Module, plan: ConversionPlan, check: tuple[tuple, int], expected: Any,
              mismatch: _Mismatch) -> list[Blocker]:
    """Name the hooks at fault for a failed end-to-end check. Hooks stripped as observers
    are tried first: the hooked model runs without each of them (it is put back at once);
    one whose absence changes the outputs feeds the model's own forward."""
    inputs, seed = check
    which = "the example inputs" if mismatch.index == 0 else "a second input drawn like the example"
    observers = [d.info for d in plan.of(Plan.STRIP) if d.info.kind in FORWARD_KINDS and not d.info.kind.startswith("global")]
    at_fault: list[HookInfo] = []
    if observers:
        with without_hooks(observers):
            changed = first_difference(_run(model, inputs, seed, "the hooked model"), expected)
        if changed is not None:
            for info in observers[:_MAX_SINGLE_CHECKS]:
                with without_hooks([info]):
                    if first_difference(_run(model, inputs, seed, "the hooked model"), expected):
                        at_fault.append(info)
    where = mismatch.difference.split(":")[0]
    if at_fault:
        return [Blocker(h.path, h.kind, h.name,
                        f"it returns None and changes no tensor, but the model's own forward reads back what it "
                        f"stores: without it, {where} changes on {which}. A module cannot carry that side effect.",
                        _TIMM_FIX if h.origin == "timm" else _TAP_FIX) for h in at_fault]
    return _blame_all(plan, which, mismatch.difference) or [Blocker(
        "", "forward", type(model).__name__,
        f"the converted model differs from the hooked model on {which} ({mismatch.difference}).",
        "report this with the model and the hooks: it is a hookwrap bug")]


def _blame_all(plan: ConversionPlan, which: str, difference: str) -> list[Blocker]:
    """When no single observer is at fault: the observers that change Python state (they may
    write what another hook reads) and every converted hook."""
    writers: list[Decision] = [d for d in plan.of(Plan.STRIP) if "Python state" in d.detail]
    kept_globals = [d for d in plan.of(Plan.KEEP) if d.info.kind in ("global_forward", "global_forward_pre")]
    return [Blocker(d.path, d.info.kind, d.info.name,
                    f"global hooks stay registered (global_hooks='keep'), so on the converted model this one runs "
                    f"before or after the converted hooks of a module instead of between them, and the output "
                    f"differs on {which} ({difference}).",
                    "pass global_hooks='convert' to turn global hooks into wrappers too (they are then removed "
                    "from the process)") for d in kept_globals] + [Blocker(d.path, d.info.kind, d.info.name,
                    f"it was stripped as an observer, but it changes Python state, and the converted model differs "
                    f"from the hooked model on {which} ({difference}): another hook may read what it stores.",
                    _TAP_FIX) for d in writers] + [Blocker(
        d.path, d.info.kind, d.info.name,
        f"the converted model differs from the hooked model on {which} ({difference}); the wrappers reproduce "
        f"each hook alone, so the hooks together do something else (state shared between calls, a hook that "
        f"sees what another one did, or randomness from outside torch).",
        "make each hook a pure function of its own inputs (no state shared with other hooks or kept between "
        "calls), or export the hooked model itself with hw.export_onnx, whose dynamo exporter runs hooks inline")
        for d in plan.of(Plan.CONVERT)]


_TAP_FIX = ("make the hook return the value it stores (or compute it in forward), or export the hooked model "
            "itself with hw.export_onnx, whose dynamo exporter runs the hook inline")
_TIMM_FIX = ("this is timm's FeatureHooks (features_only with feature_cls='hook'): timm rebuilds these hooks "
             "whenever it creates the model, so save its weights as they are (safetensors.torch.save_model) and "
             "export it with hw.export_onnx, which exports the hooked model itself; or create the model with "
             "feature_cls='getter', which needs no hooks")
