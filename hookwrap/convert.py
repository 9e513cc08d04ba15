"""``convert``: a model with no forward-path hooks left, computing the same thing.

:mod:`hookwrap.plan` decides what happens to each hook; this module carries the plan
out in one transaction, then proves it: the converted model is run against the hooked
one, end to end, seeded alike, and the whole output structure must be identical. The
runs (:class:`_Probe`): the example inputs; a second input drawn like them, with other
non-batch sizes (sequence length, spatial size), or at the example's sizes where the
hooked model refuses every other size; call options (for transformers models
``output_hidden_states=True``, ``output_attentions=True`` and ``return_dict=False``, or
the caller's ``call_options``);
and a short greedy ``generate()`` for models that generate. A difference, or a failure of
the converted model where the hooked one runs, undoes everything and raises
:class:`~hookwrap.UnconvertibleHookError` naming the hooks at fault. What ran and what
was skipped (the hooked model refused it) is in the conversion report.

Wrappers run in exactly the order PyTorch calls hooks: global pre-hooks, the module's
pre-hooks (``prepend=True`` ones first), ``forward``, global forward hooks, the module's
forward hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from . import wrappers as W
from ._diff import Difference, first_difference
from ._torch import eval_mode, forked_rng, inputs_like, other_sizes, reseed, seeded_run
from ._txn import deepcopy_model, preserved, transaction
from .errors import Blocker, HookwrapError, InvalidArgumentError, UnconvertibleHookError
from .inventory import HookInfo, list_hooks
from .plan import RECORD_SEED, ConversionPlan, Decision, GlobalHooks, check_example_inputs, plan_conversion
from .report import Action, Check, Kind, Plan, attach_report
from .strip import bake_hook, remove_hook, without_hooks

__all__ = ["convert", "convert_in_place", "check_example_inputs", "TRANSFORMERS_CALL_OPTIONS", "GENERATE_TOKENS"]

# The end-to-end check: the example inputs (run by the recording pass with RECORD_SEED when
# there was one) and a second input drawn like them (at other sizes), each run with torch's
# RNG seeded alike on both sides, so that stochastic wrappers draw exactly what the hooks drew.
CHECK_SEEDS = (RECORD_SEED, 5678)
_MAX_SINGLE_CHECKS = 64
# The call options checked by default on transformers models (each alone, on the example).
TRANSFORMERS_CALL_OPTIONS: tuple[dict[str, Any], ...] = (
    {"output_hidden_states": True}, {"output_attentions": True}, {"return_dict": False})
GENERATE_TOKENS = 3  # greedy new tokens in the generate() check: a prefill and cached one-token steps


def convert(model: nn.Module, example_inputs: Sequence[Any] | None = None, *, inplace: bool = False,
            global_hooks: GlobalHooks = "keep",
            call_options: Sequence[Mapping[str, Any]] | None = None) -> nn.Module:
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
        call_options: keyword arguments the end-to-end check also calls the model with, one
            mapping per run, on the example inputs (for example
            ``[{"output_hidden_states": True}]``). Default: for transformers models
            ``output_hidden_states=True``, ``output_attentions=True`` and
            ``return_dict=False``; none for other models. ``()`` checks none.

    Returns:
        A model with no forward-path hooks of its own left (hooks that are the model's own
        machinery, such as transformers' output capturing, stay). ``hw.conversion_report
        (result)`` says what happened to each hook and what the end-to-end check ran.

    Raises:
        InvalidArgumentError: ``model`` is not a module, ``example_inputs`` is not a tuple or
            ``call_options`` is not a list of mappings with string keys.
        UnconvertibleHookError: one or more hooks cannot be converted, or the converted
            model does not compute what the hooked one does on an input the hooked one
            accepts; it lists every hook at fault, and ``model`` is left exactly as it was.

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
    options = _check_call_options(call_options)
    target = model if inplace else deepcopy_model(model, "convert")
    return convert_in_place(target, example, global_hooks=global_hooks, call_options=options)


def convert_in_place(target: nn.Module, example: tuple | None, *, global_hooks: GlobalHooks = "keep",
                     second_input: bool = True, call_options: list[dict[str, Any]] | None = None) -> nn.Module:
    """The work of :func:`convert` on ``target`` itself (transactional).

    ``second_input=False`` checks on the example inputs only: for ``export_onnx``, which
    traces the example and whose result ``check_parity`` proves on several inputs."""
    plan = plan_conversion(target, example, global_hooks=global_hooks)
    if plan.blockers:
        raise UnconvertibleHookError(plan.blockers)
    probes: list[_Probe] = []
    expected: list[Any] = []
    checks: list[Check] = []
    for i, probe in enumerate(_probes(target, example, full=second_input, call_options=call_options)):
        if probe.fallback and any(p.resized and e is not _REFUSED for p, e in zip(probes, expected)):
            continue  # a second input at other sizes ran: it stands in for this one
        probes.append(probe)
        if i == 0 and plan.recorded:
            expected.append(plan.recorded_output)
            continue
        try:
            expected.append(probe.run(target))
        except Exception as exc:
            if probe.required:
                raise HookwrapError(f"running the hooked model on {probe.what} for convert's end-to-end check "
                                    f"failed ({type(exc).__name__}: {exc}); pass example_inputs the model "
                                    f"accepts") from exc
            expected.append(_REFUSED)
            checks.append(Check(probe.what, "skipped", f"the hooked model refused it: {_first_line(exc)}"))
    try:
        with transaction(target), torch.no_grad():
            actions = _apply(target, plan)
            for probe, want in zip(probes, expected):
                if want is _REFUSED:
                    continue
                try:
                    got = probe.run(target)
                except Exception as exc:
                    raise _Failure(probe, exc) from None
                difference = first_difference(got, want)
                if difference is not None:
                    raise _Mismatch(probe, want, difference)
                checks.append(Check(probe.what, "passed"))
            attach_report(target, actions, checks=_in_order(checks, probes))
    except _Mismatch as mismatch:  # the transaction has put target back as it was
        if not mismatch.difference.comparable:
            raise UnconvertibleHookError([_uncomparable(target, mismatch)]) from None
        raise UnconvertibleHookError(_diagnose(target, plan, mismatch)) from None
    except _Failure as failure:
        raise UnconvertibleHookError(_blame_failure(target, plan, failure)) from None
    return target


_REFUSED = object()


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}"


def _in_order(checks: list[Check], probes: list[_Probe]) -> list[Check]:
    order = {p.what: i for i, p in enumerate(probes)}
    return sorted(checks, key=lambda c: order.get(c.what, len(order)))


def _check_call_options(options: Any) -> list[dict[str, Any]] | None:
    if options is None:
        return None
    if isinstance(options, Mapping) or not isinstance(options, Sequence) or not all(
            isinstance(o, Mapping) and all(isinstance(k, str) for k in o) for o in options):
        raise InvalidArgumentError("call_options must be a list of keyword-argument mappings, such as "
                                   "[{'output_hidden_states': True}]")
    return [dict(o) for o in options]


@dataclass
class _Probe:
    """One run of the end-to-end check, the same on the hooked and the converted model.

    ``required`` runs (the example, the second input) must run on the hooked model; the
    others are skipped when the hooked model refuses them. ``resized`` runs change the
    example's sizes; a ``fallback`` run is made only when none of them ran."""

    what: str
    inputs: tuple
    seed: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    generate: bool = False
    required: bool = False
    resized: bool = False
    fallback: bool = False

    def run(self, model: nn.Module) -> Any:
        if self.generate:
            return _generate(model, self.inputs[0], self.seed)
        if not self.kwargs:
            return seeded_run(model, self.inputs, self.seed)
        with preserved(model):  # transformers installs its output-capturing hooks on first use
            return seeded_run(model, self.inputs, self.seed, self.kwargs)


def _probes(model: nn.Module, example: tuple | None, *, full: bool,
            call_options: list[dict[str, Any]] | None) -> list[_Probe]:
    if not example:
        return []
    probes = [_Probe("the example inputs", example, CHECK_SEEDS[0], required=True)]
    if not full:
        return probes
    # One run checks new values and new sizes together: a second input drawn like the
    # example, at other sizes. Only where the hooked model refuses every other size does
    # the second input run at the example's sizes (then it must run).
    second = tuple(inputs_like(example, CHECK_SEEDS[1]))
    for grown, change in other_sizes(second):
        probes.append(_Probe(f"a second input drawn like the example, with other sizes ({change})", grown,
                             CHECK_SEEDS[1], resized=True))
    probes.append(_Probe("a second input drawn like the example", second, CHECK_SEEDS[1], required=True,
                         fallback=True))
    if call_options is None:
        call_options = list(TRANSFORMERS_CALL_OPTIONS) if _is_transformers(model) else []
    for option in call_options:
        text = ", ".join(f"{k}={v!r}" for k, v in option.items())
        probes.append(_Probe(f"the example inputs with {text}", example, CHECK_SEEDS[0], kwargs=option))
    if _generates(model, example):
        probes.append(_Probe(f"greedy generate() of {GENERATE_TOKENS} tokens from the example inputs", example,
                             CHECK_SEEDS[0], generate=True))
    return probes


def _is_transformers(model: nn.Module) -> bool:
    return any(c.__module__.split(".")[0] == "transformers" for c in type(model).__mro__)


def _generates(model: nn.Module, example: tuple) -> bool:
    """A transformers model that generates, called on token ids alone."""
    can = getattr(model, "can_generate", None)
    try:
        able = bool(can()) if _is_transformers(model) and callable(can) else False
    except Exception:
        return False
    return able and len(example) == 1 and isinstance(example[0], Tensor) and example[0].dim() == 2 \
        and not example[0].is_floating_point()


def _generate(model: nn.Module, ids: Tensor, seed: int) -> Any:
    """Greedy generation with the KV cache, seeded; the tokens and every step's scores."""
    config = getattr(model, "config", None)
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = getattr(config, "eos_token_id", None)
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    with preserved(model), forked_rng(), torch.no_grad(), eval_mode(model):
        reseed(seed)
        out = model.generate(  # type: ignore[operator]
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATE_TOKENS, min_new_tokens=GENERATE_TOKENS,
            do_sample=False, use_cache=True, output_scores=True, return_dict_in_generate=True, pad_token_id=pad)
    return out.sequences, tuple(out.scores)


def _apply(model: nn.Module, plan: ConversionPlan) -> list[Action]:
    """Bake, remove and install as the plan says; return what was done, hook by hook."""
    actions: list[Action] = []
    done: set[tuple[int, int]] = set()  # (hook dictionary, id): a global hook has one decision per host
    pre: dict[int, list[W.Wrapper]] = {}
    post: dict[int, list[W.Wrapper]] = {}
    hosts: dict[int, nn.Module] = {}
    paths: dict[int, str] = {}
    for d in plan.decisions:
        key = (id(d.info.container()), d.info.hook_id)
        if d.plan is Plan.BAKE and (d.info.is_forward or d.info.kind is Kind.PARAMETRIZATION):
            actions.append(replace(d.action(), detail=bake_hook(d.info)))
            done.add(key)
            continue
        if d.plan is not Plan.KEEP and key not in done:
            if d.info.hook_id in d.info.container():  # spectral_norm's own hooks leave with it
                remove_hook(d.info)
            done.add(key)
        if d.plan is Plan.CONVERT and d.wrapper is not None and d.host is not None:
            hosts[id(d.host)] = d.host
            paths.setdefault(id(d.host), d.path)
            (pre if d.position == "pre" else post).setdefault(id(d.host), []).append(d.wrapper)
        actions.append(d.action())
    for host_id, host in hosts.items():
        W.install(host, pre.get(host_id, []), post.get(host_id, []), path=paths[host_id])
    left = [h for h in list_hooks(model, include_global=False) if h.is_forward and not h.is_model_machinery]
    if left:
        raise HookwrapError("internal error: forward hooks remain after conversion: "
                            + ", ".join(f"{h.path} [{h.kind}] {h.name}" for h in left))
    return actions


class _Mismatch(Exception):
    def __init__(self, probe: _Probe, expected: Any, difference: Difference) -> None:
        super().__init__(str(difference))
        self.probe, self.expected, self.difference = probe, expected, difference


def _uncomparable(model: nn.Module, mismatch: _Mismatch) -> Blocker:
    """convert cannot prove the converted model equal where it cannot compare the outputs:
    it refuses, naming the place, rather than report "equal"."""
    return Blocker(
        "", "forward", type(model).__name__,
        f"convert's end-to-end check cannot compare the outputs on {mismatch.probe.what} at {mismatch.difference}, "
        f"so it cannot prove the converted model computes what the hooked model computes.",
        "return tensors, lists, tuples, dicts, dataclasses or objects whose state is in __dict__ or __slots__ from "
        "forward; or, if that output does not matter, check other call options with call_options=")


class _Failure(Exception):
    def __init__(self, probe: _Probe, error: BaseException) -> None:
        super().__init__(str(error))
        self.probe, self.error = probe, error


def _diagnose(model: nn.Module, plan: ConversionPlan, mismatch: _Mismatch) -> list[Blocker]:
    """Name the hooks at fault for a failed end-to-end check. Hooks stripped as observers
    are tried first: the hooked model runs without each of them (it is put back at once);
    one whose absence changes the outputs feeds the model's own forward."""
    probe, expected = mismatch.probe, mismatch.expected
    which = probe.what
    observers = [d.info for d in plan.of(Plan.STRIP) if d.info.is_forward and not d.info.kind.is_global]
    at_fault: list[HookInfo] = []
    if observers:
        _hooked(probe, model)  # state that hooks keep between calls now holds this input's, as when expected ran
        with without_hooks(observers):
            changed = first_difference(_hooked(probe, model), expected)
        if changed is not None:
            for info in observers[:_MAX_SINGLE_CHECKS]:
                with without_hooks([info]):
                    if first_difference(_hooked(probe, model), expected):
                        at_fault.append(info)
    where = mismatch.difference.where
    if at_fault:
        return [Blocker(h.where, h.kind, h.name,
                        f"it returns None and changes no tensor, but the model's own forward reads back what it "
                        f"stores: without it, {where} changes on {which}. A module cannot carry that side effect.",
                        _TAP_FIX) for h in at_fault]
    if probe.kwargs:
        late = _after_machinery(plan, which, str(mismatch.difference))
        if late:
            return late
    return _blame_all(plan, which, str(mismatch.difference)) or [Blocker(
        "", "forward", type(model).__name__,
        f"the converted model differs from the hooked model on {which} ({mismatch.difference}).",
        "report this with the model and the hooks: it is a hookwrap bug")]


def _after_machinery(plan: ConversionPlan, which: str, difference: str) -> list[Blocker]:
    """Converted forward hooks registered after the model's own machinery on the same
    module (transformers installs its output-capturing hooks on the first call that asks for
    hidden states): on the hooked model that machinery saw the output before these hooks
    changed it; on the converted one, and on any model loaded from a file, after."""
    kept = [d for d in plan.of(Plan.KEEP) if d.info.is_model_machinery and d.info.kind is Kind.FORWARD]
    late = [d for d in plan.of(Plan.CONVERT) if d.info.kind is Kind.FORWARD
            and any(k.path == d.path and k.info.hook_id < d.info.hook_id for k in kept)]
    return [Blocker(
        d.where, d.info.kind, d.info.name,
        f"the model's own output-capturing hook ({_machinery_names(kept, d.path)}) on this module was registered "
        f"before this hook, so on {which} the hooked model records the module's output before this hook changes "
        f"it, while the converted model, like any model loaded from a file, where the library installs that hook "
        f"anew, records it after ({difference}).",
        "attach your hooks to a freshly built model, before its first call with output_hidden_states=True or "
        "output_attentions=True; or, if the converted model's behaviour is the one you want, pass "
        "call_options=[] to convert") for d in late]


def _machinery_names(kept: list[Decision], path: str) -> str:
    return ", ".join(sorted({f"{k.info.origin} {k.info.name.rsplit('.', 1)[-1]}" for k in kept if k.path == path}))


def _hooked(probe: _Probe, model: nn.Module) -> Any:
    try:
        return probe.run(model)
    except Exception as exc:
        raise HookwrapError(f"running the hooked model on {probe.what} for convert's end-to-end check failed "
                            f"({_first_line(exc)})") from exc


def _blame_failure(model: nn.Module, plan: ConversionPlan, failure: _Failure) -> list[Blocker]:
    """The converted model raised where the hooked model ran: blame the hooks that were
    converted or stripped on the modules the error went through (innermost first), else
    every converted and stripped hook. Never the inputs: the hooked model accepted them."""
    error = failure.error
    on_path = _modules_in_traceback(model, error)
    changed = [d for d in plan.decisions if d.plan in (Plan.CONVERT, Plan.STRIP, Plan.BAKE) and d.info.is_forward]
    rank = {path: i for i, path in enumerate(on_path)}
    blamed = sorted((d for d in changed if d.path in rank), key=lambda d: -rank[d.path]) or changed
    text = f"{type(error).__name__}: {error}" if isinstance(error, HookwrapError) else _first_line(error)
    detail = f"the converted model fails on {failure.probe.what} ({text}), where the hooked model runs"
    # an observer that stores Python state may be what a failing hook read (a captured
    # graph keeps what it read as a constant, at the size it had then)
    writers = [d for d in _stateful_observers(plan) if d not in blamed]
    if not blamed and not writers:
        return [Blocker("", "forward", type(model).__name__, f"{detail}.",
                        "report this with the model and the hooks: it is a hookwrap bug")]
    return [Blocker(d.where, d.info.kind, d.info.name,
                    f"{detail}; it was stripped as an observer, but it changes Python state: another hook may "
                    f"read what it stores.", _TAP_FIX) for d in writers] + [Blocker(
        d.where, d.info.kind, d.info.name,
        f"{detail}; this hook was {d.plan.done} on the path that failed." if d.path in rank else
        f"{detail}; this hook was {d.plan.done}.",
        "make the hook work on every input the model accepts (a captured graph fixes the sizes "
        "and the non-tensor arguments that the hook fixes), or export the hooked model itself with "
        "hw.export_onnx, whose dynamo exporter runs hooks inline") for d in blamed]


def _modules_in_traceback(model: nn.Module, error: BaseException) -> list[str]:
    """The paths of ``model``'s modules (hosts, wrappers) whose methods the error went
    through, outermost first, following ``raise ... from`` chains."""
    paths: dict[int, str] = {}
    for path, module in model.named_modules():
        paths.setdefault(id(module), W.host_path(path))
    found: list[str] = []
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            path = paths.get(id(owner)) if owner is not None else None
            if path is not None and path not in found:
                found.append(path)
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return found


def _stateful_observers(plan: ConversionPlan) -> list[Decision]:
    """Hooks stripped as observers that change Python state: another hook may read it."""
    return [d for d in plan.of(Plan.STRIP) if d.side_effect]


def _blame_all(plan: ConversionPlan, which: str, difference: str) -> list[Blocker]:
    """When no single observer is at fault: the observers that change Python state (they may
    write what another hook reads) and every converted hook."""
    writers = _stateful_observers(plan)
    kept_globals = [d for d in plan.of(Plan.KEEP) if d.info.kind.is_global and d.info.is_forward]
    return [Blocker(d.where, d.info.kind, d.info.name,
                    f"global hooks stay registered (global_hooks='keep'), so on the converted model this one runs "
                    f"before or after the converted hooks of a module instead of between them, and the output "
                    f"differs on {which} ({difference}).",
                    "pass global_hooks='convert' to turn global hooks into wrappers too (they are then removed "
                    "from the process)") for d in kept_globals] + [Blocker(d.where, d.info.kind, d.info.name,
                    f"it was stripped as an observer, but it changes Python state, and the converted model differs "
                    f"from the hooked model on {which} ({difference}): another hook may read what it stores.",
                    _TAP_FIX) for d in writers] + [Blocker(
        d.where, d.info.kind, d.info.name,
        f"the converted model differs from the hooked model on {which} ({difference}); the wrappers reproduce "
        f"each hook alone, so the hooks together do something else (state shared between calls, a hook that "
        f"sees what another one did, or randomness from outside torch).",
        "make each hook a pure function of its own inputs (no state shared with other hooks or kept between "
        "calls), or export the hooked model itself with hw.export_onnx, whose dynamo exporter runs hooks inline")
        for d in plan.of(Plan.CONVERT)]


_TAP_FIX = ("make the hook return the value it stores (or compute it in forward), or export the hooked model "
            "itself with hw.export_onnx, whose dynamo exporter runs the hook inline")
