"""What ``convert`` does with every hook: the one classification of hooks.

Each hook gets a :class:`Decision`: its :class:`~hookwrap.report.Plan` (convert, bake,
strip, keep, unsupported), the wrapper that stands for it, and why. ``hw.inventory``
shows these decisions, :func:`hookwrap.convert` carries them out, and the conversion
report records them. The rules are those of :mod:`hookwrap.registry`, first match wins:
what a rule knows without running the model decides (gradient hooks stripped, state-dict
hooks kept, hookwrap hooks and registered converters become their wrappers, weight
transforms baked, frozen fake quantization a FakeQuantize, library hooks as their rule
says, global hooks kept unless ``global_hooks="convert"``); a hook whose plan is
``capture`` is decided by running ``example_inputs`` (:mod:`hookwrap.capture`): observers
are stripped, known patterns become plain modules, anything else a ``CapturedHook``, or
it is unsupported, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import Tensor, nn

from . import wrappers as W
from ._graph_check import budget_for
from ._txn import preserved
from .capture import Call, Site, convert_site, record
from .errors import Blocker, HookwrapError, InvalidArgumentError
from .inventory import GLOBAL_PATH, HookInfo, Inventory, list_hooks
from .registry import source_for
from .report import PRE_KINDS, Action, Plan

__all__ = ["Decision", "ConversionPlan", "plan_conversion", "inventory", "check_example_inputs", "RECORD_SEED",
           "GlobalHooks"]

GlobalHooks = Literal["keep", "convert"]
RECORD_SEED = 1234  # torch's seed for the recording run, whose output the end-to-end check reuses
_NOT_HOSTS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def check_example_inputs(example_inputs: Any, *, what: str = "example_inputs") -> tuple | None:
    """``None`` or a tuple of positional inputs; anything else is a usage error."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Tensor):
        raise InvalidArgumentError(
            f"{what} must be a tuple of positional inputs, like torch.onnx.export takes; "
            f"got a single tensor: pass ({what[:1]},) i.e. (x,) instead of x")
    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise InvalidArgumentError(f"{what} must be a tuple of positional inputs, got {type(example_inputs).__name__}")
    return example_inputs


@dataclass
class Decision:
    """What convert does with one hook at one module (a global hook gets one decision
    per module it fired on)."""

    info: HookInfo
    path: str
    plan: Plan
    detail: str
    wrapper: W.Wrapper | None = None
    host: nn.Module | None = field(default=None, repr=False)
    fix: str = ""
    side_effect: bool = False  # an observer that changes Python state (another hook may read it)

    @property
    def position(self) -> str:
        return "pre" if self.info.kind in PRE_KINDS else "post"

    def action(self) -> Action:
        wrapper = self.wrapper.kind if self.wrapper is not None else None
        return Action(self.path, self.info.kind, self.info.name, self.info.origin, self.plan.done,  # type: ignore[arg-type]
                      self.detail, wrapper, self.position if wrapper else None)

    def blocker(self) -> Blocker:
        return Blocker(self.where, self.info.kind, self.info.name, self.detail, self.fix)

    @property
    def where(self) -> str:
        """The path to name in messages: the user's name for the module where a library
        wraps modules (TransformerLens), with the module path."""
        if self.info.alias and self.path == self.info.path:
            return self.info.where
        return self.path


@dataclass
class ConversionPlan:
    """Every decision, in inventory order, and the hooked model's output on the example
    inputs when the recording run produced it (the end-to-end check reuses it)."""

    decisions: list[Decision]
    recorded_output: Any = None
    recorded: bool = False

    @property
    def blockers(self) -> list[Blocker]:
        return [d.blocker() for d in self.decisions if d.plan is Plan.UNSUPPORTED]

    def of(self, plan: Plan) -> list[Decision]:
        return [d for d in self.decisions if d.plan is plan]


def plan_conversion(model: nn.Module, example_inputs: tuple | None, *,
                    global_hooks: GlobalHooks = "keep") -> ConversionPlan:
    """Decide, for every hook of ``model``, what :func:`hookwrap.convert` does with it.

    Running ``example_inputs`` once (seeded, eval mode) records the hooks that must be
    captured; the model's structure and hooks are as they were afterwards.

    Raises:
        HookwrapError: ``example_inputs`` do not run through the model.
    """
    if global_hooks not in ("keep", "convert"):
        raise InvalidArgumentError(f"global_hooks must be 'keep' or 'convert', got {global_hooks!r}")
    listed = list_hooks(model)
    modules = dict(model.named_modules())
    sites = _sites_to_record(listed, modules, model, global_hooks)
    calls: dict[tuple[str, str, int], list[Call]] | None = None
    plan = ConversionPlan([])
    if sites and example_inputs is not None:
        try:
            with preserved(model):
                calls, plan.recorded_output = record(model, example_inputs, sites, seed=RECORD_SEED)
            plan.recorded = True
        except Exception as exc:
            raise HookwrapError(f"running example_inputs through {type(model).__name__} failed "
                                f"({type(exc).__name__}: {exc}); pass inputs the model accepts") from exc
    budget = budget_for((t.dtype, t.shape) for t in [*model.parameters(), *model.buffers()])
    for info in listed:
        plan.decisions += _decide(info, model, modules, calls, global_hooks, budget)
    return plan


def _needs_running(info: HookInfo, global_hooks: GlobalHooks) -> bool:
    if not info.is_forward:
        return False
    if info.path == GLOBAL_PATH:
        return global_hooks == "convert"
    return info.plan is Plan.CAPTURE


def _sites_to_record(listed: Inventory, modules: dict[str, nn.Module], model: nn.Module,
                     global_hooks: GlobalHooks) -> list[Site]:
    """The hooks whose decision needs a recording run: those to capture, and global hooks
    being converted (to learn which modules they fire on)."""
    sites = []
    for info in listed:
        if _needs_running(info, global_hooks):
            position = "pre" if info.kind in PRE_KINDS else "post"
            sites.append(Site(info, info.path, modules.get(info.path, model), position, info.with_kwargs))
    return sites


def _decide(info: HookInfo, model: nn.Module, modules: dict[str, nn.Module],
            calls: dict[tuple[str, str, int], list[Call]] | None, global_hooks: GlobalHooks,
            budget: int) -> list[Decision]:
    if info.path == GLOBAL_PATH and global_hooks == "convert":
        if not info.is_forward:
            return [Decision(info, info.path, Plan.STRIP, "global gradient hook: removed from the process")]
        return [_decide_forward(info, path, host, calls, budget) for path, host in _global_hosts(model, info, calls)]
    if not info.is_forward or info.plan not in (Plan.CONVERT, Plan.CAPTURE):
        fix = info.source.fix() if info.source is not None and info.plan is Plan.UNSUPPORTED else ""
        return [Decision(info, info.path, info.plan, info.reason, fix=fix)]
    return [_decide_forward(info, info.path, modules[info.path], calls, budget)]


def _decide_forward(info: HookInfo, path: str, host: nn.Module,
                    calls: dict[tuple[str, str, int], list[Call]] | None, budget: int) -> Decision:
    """A forward hook at one module: its rule's plan, the wrapper its rule builds, or capture.
    A global hook being converted is decided as if it were registered on ``host``."""
    ref = replace(info.ref, owner=host)
    source = source_for(ref, skip_global=True) if info.path == GLOBAL_PATH else info.source
    assert source is not None
    plan, reason = source.plan(ref)
    if plan is Plan.CONVERT:
        try:
            wrapper = source.build(ref, host)
        except HookwrapError as exc:
            return Decision(info, path, Plan.UNSUPPORTED, str(exc), host=host,
                            fix="fix the converter so that it returns its declared wrapper type")
        return Decision(info, path, Plan.CONVERT, source.decided(ref, wrapper), wrapper, host)
    if plan is not Plan.CAPTURE:
        return Decision(info, path, plan, reason, host=host, fix=source.fix() if plan is Plan.UNSUPPORTED else "")
    site = Site(info, path, host, "pre" if info.kind in PRE_KINDS else "post", info.with_kwargs)
    outcome = convert_site(site, None if calls is None else calls.get(site.key, []), budget=budget)
    return Decision(info, path, outcome.plan, outcome.detail, outcome.wrapper, host, outcome.fix,
                    side_effect=outcome.side_effect)


def _global_hosts(model: nn.Module, info: HookInfo, calls: dict | None) -> list[tuple[str, nn.Module]]:
    """The modules a global hook fired on (when recorded), else every module."""
    named = [(p, m) for p, m in model.named_modules() if not isinstance(m, _NOT_HOSTS) and not W.in_wrapper(p)]
    if calls is None:
        return named
    return [(p, m) for p, m in named if (p, info.kind, info.hook_id) in calls]


def inventory(model: nn.Module, example_inputs: Any = None, *, include_global: bool = True,
              global_hooks: GlobalHooks = "keep") -> Inventory:
    """Every hook on ``model`` and every global module hook, with what ``convert`` does with it.

    Without ``example_inputs`` a hook that must be captured says so; with them, the model
    runs once (your hooks are called; its structure and hooks stay as they are) and every
    plan and reason is convert's own decision: "recognised as Dropout2d(p=0.2, always=True)",
    "observer: ...", or why it cannot be converted.

    Args:
        model: the model to inspect; it is not changed.
        example_inputs: a tuple of positional inputs, as for :func:`hookwrap.convert`.
        include_global: also list global module hooks (path ``"<global>"``).
        global_hooks: as for :func:`hookwrap.convert`.

    Returns:
        An :class:`~hookwrap.inventory.Inventory` of :class:`~hookwrap.inventory.HookInfo`.

    Raises:
        InvalidArgumentError: ``model`` is not a module or ``example_inputs`` not a tuple.
        HookwrapError: ``example_inputs`` do not run through the model.

    Example:
        >>> print(hw.inventory(model, (x,)))        # a table: path, kind, name, origin, ..., plan, reason
    """
    listed = list_hooks(model, include_global=include_global)
    example = check_example_inputs(example_inputs)
    if example is None:
        return listed
    plan = plan_conversion(model, example, global_hooks=global_hooks)
    by_hook: dict[tuple[str, str, int], list[Decision]] = {}
    for decision in plan.decisions:
        by_hook.setdefault((decision.info.path, decision.info.kind, decision.info.hook_id), []).append(decision)
    return Inventory([_with_decisions(info, by_hook.get((info.path, info.kind, info.hook_id), []))
                      for info in listed], listed.model_name)


def _with_decisions(info: HookInfo, decisions: list[Decision]) -> HookInfo:
    if not decisions:
        return info
    if len(decisions) == 1:
        return replace(info, plan=decisions[0].plan, reason=decisions[0].detail)
    plans = {d.plan for d in decisions}
    worst = Plan.UNSUPPORTED if Plan.UNSUPPORTED in plans else decisions[0].plan
    reasons: dict[str, list[str]] = {}
    for d in decisions:
        reasons.setdefault(d.detail, []).append(d.path or "<root>")
    text = "; ".join(f"{detail} (at {', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})"
                     for detail, paths in reasons.items())
    return replace(info, plan=worst, reason=text)

