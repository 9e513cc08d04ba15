"""Capture: turn a user's forward hook (function, bound method, lambda, closure or
callable object) into a wrapper module.

The steps, for each hooked call site:

1. **Record.** :func:`record` runs ``example_inputs`` through the model once (eval mode,
   ``no_grad``, the caller's RNG state restored afterwards) with every hook to capture
   replaced by a recording proxy. For each call it keeps a copy of the hook's inputs,
   whether the hook returned ``None``, which inputs it modified in place, and whether
   it changed Python state it can reach (lists and objects in its closure, globals it
   names, its ``self``, the host module's attributes and tensors).
2. **Classify.** A hook that returned ``None`` and changed nothing is an *observer*:
   it is stripped. A hook that changed Python state *and* the tensors cannot be
   represented by a module: it is a blocker.
3. **Recognise.** The hook is re-run on the recorded tensors under a
   ``TorchFunctionMode`` in train and in eval mode. If its body is a chain of known
   operations on the primary tensor (the dropout family, activations, scalar scale and
   shift, clamp, ``x + randn_like(x) * std``), it becomes the matching plain module,
   with ``always=True`` when a dropout's ``training`` argument is ``True`` in eval mode
   too (the seed's ``F.dropout2d(out, p, True, False)``).
4. **Capture.** Otherwise the body is exported with ``torch.export`` (non-strict, every
   dimension of every input symbolic) into a :class:`~hookwrap.wrappers.CapturedHook`.
   The sizes export specialised are recorded in it, and a call at another size is
   refused by name.
5. **Validate.** The wrapper is run against the hook on every recorded call, under the
   same RNG seed, in eval and train mode; a captured graph also at other sizes of each
   symbolic dimension (the size at capture + 3, and 1). Any difference is a blocker:
   hookwrap never guesses.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree

from . import _tree
from . import wrappers as W
from ._diff import first_difference
from ._torch import batch_of_two, forked_rng, quiet, reseed, resized, seeded_run, unwrap_hook
from .errors import InvalidArgumentError
from .inventory import HookInfo
from .report import Plan

__all__ = ["Site", "Call", "Outcome", "record", "convert_site"]

MAX_RECORDED_CALLS = 2
_SEED = 20240611


@dataclass
class Site:
    """One hook at one module: what to convert."""

    info: HookInfo
    path: str
    host: nn.Module
    position: str  # "pre" or "post"
    with_kwargs: bool

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.path, self.info.kind, self.info.hook_id)

    @property
    def hook(self) -> Callable[..., Any]:
        return self.info.hook


@dataclass
class Call:
    """One recorded call of a hook."""

    inputs: tuple | None  # the hook's arguments after ``module`` (kept for the first calls only)
    returned_none: bool
    mutated: list[str]
    side_effect: str | None
    own_activation: bool = True  # every in-place write was to the hook's own activation


@dataclass(frozen=True)
class Outcome:
    """What capture decided for one site: ``CONVERT`` (``wrapper`` stands for the hook),
    ``STRIP`` (an observer, or a hook with no effect) or ``UNSUPPORTED`` (``fix`` says how)."""

    plan: Plan
    detail: str
    wrapper: W.Wrapper | None = None
    fix: str = ""
    calls: int = 0
    side_effect: bool = False  # a stripped observer that changes Python state


# --------------------------------------------------------------------------------------
# Side effects
# --------------------------------------------------------------------------------------

_SKIP_TYPES = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _fingerprint(obj: Any, depth: int, seen: set[int]) -> Any:
    if isinstance(obj, (int, float, str, bool, bytes, type(None))):
        return obj
    if isinstance(obj, Tensor):
        return ("tensor", id(obj), obj._version)
    if isinstance(obj, _SKIP_TYPES) or id(obj) in seen:
        return ("ref", id(obj))
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        state = {k: v for k, v in obj.__dict__.items() if not k.startswith("_") or k in ("_parameters", "_buffers")}
        return ("module", id(obj), _fingerprint(state, depth, seen))
    if depth <= 0:
        return ("obj", id(obj), len(obj) if isinstance(obj, (list, dict, set, tuple)) else None)
    if isinstance(obj, dict):
        items = list(obj.items())[:256]
        return ("dict", len(obj), tuple((repr(k)[:64], _fingerprint(v, depth - 1, seen)) for k, v in items))
    if isinstance(obj, (list, tuple, set, frozenset)):
        members = list(obj)[:256] if not isinstance(obj, (set, frozenset)) else sorted(map(id, obj))[:256]
        return (type(obj).__name__, len(obj), tuple(_fingerprint(v, depth - 1, seen) for v in members))
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        return ("obj", id(obj), _fingerprint(attrs, depth - 1, seen))
    return ("opaque", id(obj))


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _reachable(hook: Any) -> list[Any]:
    """Objects whose change would be a side effect of calling ``hook``."""
    target = unwrap_hook(hook)
    objs: list[Any] = []
    funcs: list[Any] = []
    if isinstance(target, types.MethodType):
        objs.append(target.__self__)
        funcs.append(target.__func__)
    elif isinstance(target, types.FunctionType):
        funcs.append(target)
    else:
        objs.append(target)
        call = getattr(type(target), "__call__", None)  # noqa: B004
        if isinstance(call, types.FunctionType):
            funcs.append(call)
    for func in funcs:
        for cell in func.__closure__ or ():
            with contextlib.suppress(ValueError):
                objs.append(cell.cell_contents)
        globs = func.__globals__
        for name in sorted(_code_names(func.__code__)):
            if name in globs:
                objs.append(("global", name, globs[name]))
        objs.extend(func.__defaults__ or ())
    return objs


def _state_of(hook: Any, host: nn.Module) -> Any:
    seen: set[int] = set()
    objs = [_fingerprint(o, 2, seen) for o in _reachable(hook)]
    host_tensors = tuple(
        (n, id(t), t._version) for n, t in list(host.named_parameters()) + list(host.named_buffers())
    )
    host_attrs = tuple(sorted(
        (k, id(v)) for k, v in host.__dict__.items() if not k.startswith("_") and k != "training"
    ))
    return objs, host_tensors, host_attrs


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


def _clone_tree(tree: Any) -> Any:
    return _pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, Tensor) else v, tree)


def _fresh(call: Call) -> Any:
    """The call's recorded inputs, copied again only if the hook modifies them in place."""
    return _clone_tree(call.inputs) if call.mutated else call.inputs


def _versions(tree: Any) -> list[tuple[int, int]]:
    """``(id, version)`` of every tensor in ``tree``: an in-place write bumps the version."""
    return [(id(v), v._version) for v in _pytree.tree_leaves(tree) if isinstance(v, Tensor)]


def _input_names(position: str, with_kwargs: bool) -> list[str]:
    if position == "pre":
        return ["args", "kwargs"] if with_kwargs else ["args"]
    return ["args", "kwargs", "output"] if with_kwargs else ["args", "output"]


def _make_proxy(
    hook: Callable[..., Any], kind: str, hook_id: int, paths: dict[int, str], store: dict,
    position: str, with_kwargs: bool,
) -> Callable[..., Any]:
    names = _input_names(position, with_kwargs)

    def proxy(module: nn.Module, *rest: Any) -> Any:
        path = paths.get(id(module))
        if path is None:  # a module outside the model (global hooks only)
            return hook(module, *rest)
        calls = store.setdefault((path, kind, hook_id), [])
        kept = _clone_tree(rest) if len(calls) < MAX_RECORDED_CALLS else None
        before_v = [_versions(part) for part in rest]
        before_s = _state_of(hook, module)
        result = hook(module, *rest)
        after_s = _state_of(hook, module)
        after_v = [_versions(part) for part in rest]
        changed = {names[i]: {t for (t, v0), (_, v1) in zip(b, a) if v0 != v1}
                   for i, (b, a) in enumerate(zip(before_v, after_v))}
        mutated = [name for name, ids in changed.items() if ids]
        # what a hook writes in place into its own activation is its effect: the output of
        # a forward hook (also through its args, when the module returns its input, as an
        # identity hook point does), or what a pre-hook's module will receive
        outputs = {t for t, _ in _versions(rest[-1])} if position == "post" else set()
        own = position == "pre" or all(ids <= outputs for name, ids in changed.items() if name != "output")
        side = None
        if before_s != after_s:
            side = "changes Python state it can reach (its closure, globals, self or the module)"
        calls.append(Call(kept, result is None, mutated, side, own))
        return result

    return proxy


def record(model: nn.Module, example_inputs: tuple, sites: list[Site], *,
           seed: int) -> tuple[dict[tuple[str, str, int], list[Call]], Any]:
    """Run ``example_inputs`` once (eval mode, torch's RNG seeded with ``seed``) and record
    every call of the hooks behind ``sites``.

    The model's hooks, training flags and the global RNG state are restored afterwards.
    Returns the calls keyed by ``(module path, kind, hook_id)``, and the model's output
    (the hooks ran as usual, so it is the hooked model's output).
    """
    paths: dict[int, str] = {}
    for p, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), p)  # a shared module is known by its first path, as in inventory
    store: dict[tuple[str, str, int], list[Call]] = {}
    replaced: list[tuple[dict, int, Any]] = []
    done: set[tuple[int, int]] = set()
    for site in sites:
        info = site.info
        container = info.container()
        if (id(container), info.hook_id) in done:
            continue
        done.add((id(container), info.hook_id))
        replaced.append((container, info.hook_id, container[info.hook_id]))
        container[info.hook_id] = _make_proxy(
            info.hook, info.kind, info.hook_id, paths, store, site.position, site.with_kwargs
        )
    try:
        output = seeded_run(model, example_inputs, seed)
    finally:
        for container, hook_id, hook in replaced:
            container[hook_id] = hook
    return store, output


# --------------------------------------------------------------------------------------
# Running a hook and a wrapper the same way
# --------------------------------------------------------------------------------------


def _run_hook(site: Site, inputs: tuple) -> Any:
    """The hook's effect, normalised: the new output (post) or the new (args, kwargs)."""
    result = site.hook(site.host, *inputs)
    if site.position == "post":
        return inputs[-1] if result is None else result
    if site.with_kwargs:
        return (inputs[0], inputs[1]) if result is None else result
    if result is None:
        return inputs[0]
    return result if isinstance(result, tuple) else (result,)


def _run_wrapper(site: Site, wrapper: W.Wrapper, inputs: tuple) -> Any:
    if site.position == "post":
        args, kwargs = inputs[0], inputs[1] if site.with_kwargs else {}
        return wrapper.hookwrap_post(site.host, args, kwargs, inputs[-1])
    kwargs = inputs[1] if site.with_kwargs else {}
    new_args, new_kwargs = wrapper.hookwrap_pre(site.host, inputs[0], kwargs)
    return (new_args, new_kwargs) if site.with_kwargs else new_args


@contextlib.contextmanager
def _host_mode(site: Site, wrapper: W.Wrapper | None, training: bool) -> Iterator[None]:
    old = site.host.training
    old_w = [(m, m.training) for m in wrapper.modules()] if wrapper is not None else []
    site.host.training = training
    if wrapper is not None:
        wrapper.train(training)
    try:
        yield
    finally:
        site.host.training = old
        for m, mode in old_w:
            m.training = mode


def _validate(site: Site, wrapper: W.Wrapper, calls: list[Call]) -> str | None:
    """None if ``wrapper`` reproduces the hook on every recorded call, else why not."""
    for call in calls:
        for training in (False, True):
            ran = _both(site, wrapper, functools.partial(_fresh, call), training)
            if ran is None:
                return f"the hook itself fails in {'train' if training else 'eval'} mode on a recorded call"
            if isinstance(ran, str):
                return f"the converted module fails on a recorded call: {ran}"
            diff = first_difference(*ran)
            if diff is not None:
                mode = "train" if training else "eval"
                return f"the converted module does not reproduce the hook in {mode} mode ({diff})"
    return None


def _generalise(site: Site, wrapper: W.CapturedHook, call: Call) -> str | None:
    """Check a captured graph against the hook at other sizes of each symbolic dimension:
    the size at capture + 3, and 1. A graph that differs where the hook works is a blocker
    at the larger size; at size 1 (export assumes symbolic sizes are at least 2) the
    symbol's range keeps 2 as its minimum, so that a call at 1 is refused by name. Sizes
    at which the hook itself fails are not the graph's concern."""
    leaves, spec = _tree.flatten(call.inputs)
    slots = [i for i, v in enumerate(wrapper.in_template) if v == W.TENSOR]
    for name, rng in wrapper.symbols.items():
        where = [(slots[k], d) for k, row in enumerate(wrapper.input_dims or []) for d, v in enumerate(row)
                 if v == name]
        n = rng["captured"]
        if not where or n < 1:
            continue
        bigger = n + 3
        if rng["max"] is None or bigger <= rng["max"]:
            diff = _at_size(site, wrapper, leaves, spec, call.inputs, where, bigger)
            if diff is not None:
                label = wrapper._input_labels[slots.index(where[0][0])]
                return (f"the captured graph does not generalise: with dim {where[0][1]} of {label} at {bigger} "
                        f"instead of {n}, {diff}")
        if n != 1 and rng["min"] <= 2:
            low = rng["min"]
            rng["min"] = 1
            if _at_size(site, wrapper, leaves, spec, call.inputs, where, 1) is not None:
                rng["min"] = max(low, 2)
    return None


def _sizes_agree(site: Site, wrapper: W.Wrapper, call: Call) -> bool:
    """True if a recognised module computes what the hook does with each dimension of the
    tensor it transforms 3 larger (recognition reads one trace, which cannot see a hook
    that branches on a size), wherever the hook itself runs there."""
    inputs = call.inputs
    if inputs is None:
        return True
    try:
        primary = _primary(site, inputs)
    except _NoMatch:
        return True
    where = -1 if site.position == "post" else 0

    def grown(dim: int, base: tuple) -> tuple:  # ``base`` is a copy: the recorded tensors are never handed out
        tree = list(base)
        tree[where] = W.map_primary(tree[where], functools.partial(resized, dim=dim, size=primary.shape[dim] + 3))
        return tuple(tree)

    # The runs (hook and module, in each mode, for each dimension) share one copy of the
    # inputs, each dimension's grown tensor on top, while none writes into them; from the
    # first run that does, each run gets its own copy.
    base, writes = _clone_tree(inputs), False
    for dim in range(primary.dim()):
        shared = None if writes else grown(dim, base)
        for training in (False, True):
            ran = None
            if not writes:
                versions = _versions(shared)
                ran = _both(site, wrapper, lambda: shared, training)
                writes = _versions(shared) != versions
            if writes:
                ran = _both(site, wrapper, lambda: grown(dim, _clone_tree(inputs)), training)
            if isinstance(ran, str) or (ran is not None and first_difference(*ran) is not None):
                return False
    return True


def _at_size(site: Site, wrapper: W.CapturedHook, leaves: list, spec: Any, like: Any,
             where: list[tuple[int, int]], size: int) -> str | None:
    """None if the wrapper matches the hook with the dimensions ``where`` set to ``size``
    (or if the hook itself fails there), else what differs."""
    grown = list(leaves)
    for slot, dim in where:
        grown[slot] = resized(grown[slot], dim, size)
    variant = _tree.unflatten(grown, spec, like=like)
    ran = _both(site, wrapper, functools.partial(_clone_tree, variant), False)
    if ran is None:
        return None
    if isinstance(ran, str):
        return f"the graph fails ({ran})"
    diff = first_difference(*ran)
    return None if diff is None else f"the graph gives another result ({diff})"


def _both(site: Site, wrapper: W.Wrapper, inputs: Callable[[], Any], training: bool) -> tuple[Any, Any] | str | None:
    """``(wrapper's result, hook's result)`` on fresh copies of the inputs under the same
    seed; a string if the wrapper fails, None if the hook itself fails on these inputs."""
    with _host_mode(site, wrapper, training), forked_rng(), torch.no_grad():
        reseed(_SEED)
        try:
            expected = _run_hook(site, inputs())
        except Exception:
            return None
        reseed(_SEED)
        try:
            got = _run_wrapper(site, wrapper, inputs())
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    return got, expected


# --------------------------------------------------------------------------------------
# Recognition of known patterns, on a torch-function-level trace
# --------------------------------------------------------------------------------------


class _Trace(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


class _NoMatch(Exception):
    pass


def _bind(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """Bind ``args[1:]`` and ``kwargs`` to parameter ``names`` (``args[0]`` is the tensor)."""
    bound: dict[str, Any] = {}
    rest = args[1:]
    if len(rest) > len(names):
        raise _NoMatch
    for name, value in zip(names, rest):
        bound[name] = value
    for key, value in kwargs.items():
        if key in bound or (key not in names and key != "_stacklevel"):
            raise _NoMatch
        bound[key] = value
    for name in names:
        if name not in bound:
            if name not in defaults:
                raise _NoMatch
            bound[name] = defaults[name]
    return bound


def _scalar(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _NoMatch
    return value


_DROPOUTS = {
    F.dropout: "Dropout", F.dropout1d: "Dropout1d", F.dropout2d: "Dropout2d",
    F.dropout3d: "Dropout3d", F.alpha_dropout: "AlphaDropout",
    F.feature_alpha_dropout: "FeatureAlphaDropout",
}
_PLAIN_ACTIVATIONS = {
    F.relu: "ReLU", torch.relu: "ReLU", Tensor.relu: "ReLU", F.relu6: "ReLU6", F.selu: "SELU",
    torch.selu: "SELU", F.silu: "SiLU", F.mish: "Mish", torch.sigmoid: "Sigmoid",
    Tensor.sigmoid: "Sigmoid", torch.tanh: "Tanh", Tensor.tanh: "Tanh", F.hardswish: "Hardswish",
    F.hardsigmoid: "Hardsigmoid", F.softsign: "Softsign", F.tanhshrink: "Tanhshrink",
    F.logsigmoid: "LogSigmoid",
}
# name -> (parameters after the input, defaults, activation class argument names)
_PARAM_ACTIVATIONS: dict[Any, tuple[str, tuple[str, ...], dict[str, Any], dict[str, str]]] = {
    F.gelu: ("GELU", ("approximate",), {"approximate": "none"}, {"approximate": "approximate"}),
    F.leaky_relu: ("LeakyReLU", ("negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False},
                   {"negative_slope": "negative_slope"}),
    F.elu: ("ELU", ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}, {"alpha": "alpha"}),
    F.celu: ("CELU", ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}, {"alpha": "alpha"}),
    F.hardtanh: ("Hardtanh", ("min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0, "inplace": False},
                 {"min_val": "min_val", "max_val": "max_val"}),
    F.softplus: ("Softplus", ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0},
                 {"beta": "beta", "threshold": "threshold"}),
    F.hardshrink: ("Hardshrink", ("lambd",), {"lambd": 0.5}, {"lambd": "lambd"}),
    F.softshrink: ("Softshrink", ("lambd",), {"lambd": 0.5}, {"lambd": "lambd"}),
    F.threshold: ("Threshold", ("threshold", "value", "inplace"), {"inplace": False},
                  {"threshold": "threshold", "value": "value"}),
    F.softmax: ("Softmax", ("dim", "_stacklevel", "dtype"), {"_stacklevel": 3, "dtype": None}, {"dim": "dim"}),
    F.log_softmax: ("LogSoftmax", ("dim", "_stacklevel", "dtype"), {"_stacklevel": 3, "dtype": None}, {"dim": "dim"}),
}
_MULS = {Tensor.mul, torch.mul, Tensor.__mul__, Tensor.__rmul__}
_DIVS = {Tensor.div, torch.div, Tensor.__truediv__}
_ADDS = {Tensor.add, torch.add, Tensor.__add__, Tensor.__radd__}
_SUBS = {Tensor.sub, torch.sub, Tensor.__sub__}
_CLAMPS = {torch.clamp, Tensor.clamp, torch.clip, Tensor.clip}
_CLAMP_MINS = {torch.clamp_min, Tensor.clamp_min}
_CLAMP_MAXS = {torch.clamp_max, Tensor.clamp_max}


def _item(func: Any, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any], bool | None]:
    """``(wrapper kind, config, dropout training flag)`` for one recognised call."""
    if func in _DROPOUTS:
        b = _bind(args, kwargs, ("p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False})
        if not isinstance(b["training"], bool):
            raise _NoMatch
        return _DROPOUTS[func], {"p": _scalar(b["p"])}, b["training"]
    if func in _PLAIN_ACTIVATIONS:
        b = _bind(args, kwargs, ("inplace",), {"inplace": False})
        return "Activation", {"name": _PLAIN_ACTIVATIONS[func], "kwargs": {}}, None
    if func in _PARAM_ACTIVATIONS:
        name, params, defaults, mapping = _PARAM_ACTIVATIONS[func]
        b = _bind(args, kwargs, params, defaults)
        if b.get("dtype") is not None:
            raise _NoMatch
        return "Activation", {"name": name, "kwargs": {k: b[v] for k, v in mapping.items()}}, None
    if func in _MULS:
        b = _bind(args, kwargs, ("other",), {})
        return "Scale", {"factor": _scalar(b["other"])}, None
    if func in _DIVS:
        b = _bind(args, kwargs, ("other", "rounding_mode"), {"rounding_mode": None})
        if b["rounding_mode"] is not None:
            raise _NoMatch
        return "Scale", {"divisor": _scalar(b["other"])}, None
    if func in _ADDS or func in _SUBS:
        b = _bind(args, kwargs, ("other", "alpha"), {"alpha": 1})
        if b["alpha"] != 1 or isinstance(b["alpha"], bool):
            raise _NoMatch
        other = _scalar(b["other"])
        return "Shift", {"offset": other if func in _ADDS else -other}, None
    if func in _CLAMPS:
        b = _bind(args, kwargs, ("min", "max"), {"min": None, "max": None})
        lo = None if b["min"] is None else _scalar(b["min"])
        hi = None if b["max"] is None else _scalar(b["max"])
        return "Clamp", {"min": lo, "max": hi}, None
    if func in _CLAMP_MINS:
        return "Clamp", {"min": _scalar(_bind(args, kwargs, ("min",), {})["min"]), "max": None}, None
    if func in _CLAMP_MAXS:
        return "Clamp", {"min": None, "max": _scalar(_bind(args, kwargs, ("max",), {})["max"])}, None
    raise _NoMatch


def _chain(calls: list[tuple[Any, tuple, dict, Any]], start: Tensor) -> tuple[list[tuple[str, dict, bool | None]], Tensor]:
    """Read the trace as a chain of recognised operations starting at ``start``."""
    items: list[tuple[str, dict, bool | None]] = []
    cur = start
    i = 0
    while i < len(calls):
        func, args, kwargs, out = calls[i]
        # x + torch.randn_like(x) * std  ->  GaussianNoise(std)
        if func is torch.randn_like and args and args[0] is cur and not kwargs and i + 2 < len(calls):
            f2, a2, k2, o2 = calls[i + 1]
            f3, a3, k3, o3 = calls[i + 2]
            if f2 in _MULS and a2 and a2[0] is out and not k2 and len(a2) == 2 and f3 in _ADDS and not k3 \
                    and len(a3) == 2 and {id(a3[0]), id(a3[1])} == {id(cur), id(o2)}:
                items.append(("GaussianNoise", {"std": _scalar(a2[1])}, True))
                cur = o3
                i += 3
                continue
        if not args or args[0] is not cur or not isinstance(out, Tensor):
            raise _NoMatch
        if any(isinstance(v, Tensor) for v in (*args[1:], *kwargs.values())):
            raise _NoMatch
        items.append(_item(func, args, kwargs))
        cur = out
        i += 1
    return items, cur


def _primary(site: Site, inputs: tuple) -> Tensor:
    value = inputs[-1] if site.position == "post" else inputs[0]
    if site.position == "pre":
        if value and isinstance(value[0], Tensor):
            return value[0]
        raise _NoMatch
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise _NoMatch


def _trace_chain(site: Site, call: Call, training: bool) -> list[tuple[str, dict, bool | None]]:
    inputs = _fresh(call)
    start = _primary(site, inputs)
    try:
        with _host_mode(site, None, training), forked_rng(), torch.no_grad():
            with _Trace() as trace:
                result = _run_hook(site, inputs)
    except Exception:  # the hook itself fails in this mode: not a pattern we can name
        raise _NoMatch from None
    items, end = _chain(trace.calls, start)
    # The result must be the primary tensor transformed, everything else passed through.
    if site.position == "post":
        original = inputs[-1]
        if isinstance(original, Tensor):
            ok = result is end
        else:
            ok = (isinstance(result, type(original)) and len(result) == len(original) and result[0] is end
                  and all(r is o for r, o in zip(result[1:], original[1:])))
    else:
        if site.with_kwargs:
            raise _NoMatch
        original = inputs[0]
        ok = (isinstance(result, tuple) and len(result) == len(original) and result[0] is end
              and all(r is o for r, o in zip(result[1:], original[1:])))
    if not ok:
        raise _NoMatch
    return items


def _merge_modes(train: list, eval_: list) -> list[tuple[str, dict, bool]] | None:
    """Combine the train-mode and eval-mode chains into items with an ``always`` flag.

    A stochastic item that only appears (or only drops) in train mode follows the
    module's mode (``always=False``); one active in eval mode too is ``always=True``.
    Returns None when the two modes differ in any other way.
    """
    merged: list[tuple[str, dict, bool]] = []
    i = j = 0
    stochastic = {"GaussianNoise", *_DROPOUTS.values()}
    while i < len(train) or j < len(eval_):
        t = train[i] if i < len(train) else None
        e = eval_[j] if j < len(eval_) else None
        if t is not None and e is not None and t[0] == e[0] and t[1] == e[1]:
            if t[2] is None:
                merged.append((t[0], t[1], False))
            elif e[2]:
                if not t[2]:
                    return None  # on in eval, off in train: not a module we have
                merged.append((t[0], t[1], True))
            elif t[2]:
                merged.append((t[0], t[1], False))
            # else: training=False in both modes: a no-op, dropped
            i += 1
            j += 1
            continue
        if t is not None and t[0] in stochastic and t[2]:
            merged.append((t[0], t[1], False))  # only in train mode
            i += 1
            continue
        return None
    return merged


def _build_items(items: list[tuple[str, dict, bool]]) -> W.Wrapper:
    built: list[W.Wrapper] = []
    for kind, config, always in items:
        cfg = dict(config)
        if kind in _DROPOUTS.values() or kind == "GaussianNoise":
            cfg["always"] = always
        built.append(W.build_wrapper({"type": kind, "config": cfg}))
    return built[0] if len(built) == 1 else W.Chain(built)


@dataclass(frozen=True)
class _Recognition:
    """What pattern recognition found: a plain ``wrapper``, ``no_effect`` (a chain of
    operations that does nothing, such as dropout with ``training=False``), or neither;
    ``note`` reports a failure of the recogniser itself."""

    wrapper: W.Wrapper | None = None
    no_effect: bool = False
    note: str = ""


def _recognise(site: Site, call: Call) -> _Recognition:
    try:
        train = _trace_chain(site, call, True)
        eval_ = _trace_chain(site, call, False)
        merged = _merge_modes(train, eval_)
        if merged is None:
            return _Recognition()
        if not merged:
            return _Recognition(no_effect=True)
        return _Recognition(wrapper=_build_items(merged))
    except _NoMatch:
        return _Recognition()
    except Exception as exc:  # a bug in a recogniser: say so in the report, then capture the hook
        return _Recognition(note=f" (the pattern recogniser failed with {type(exc).__name__}: {exc}, so it was "
                                 f"captured instead)")


def _mode_dependent(site: Site, call: Call) -> bool:
    """True if the hook runs different torch operations in train and in eval mode."""
    shapes = []
    for training in (True, False):
        inputs = _fresh(call)
        try:
            with _host_mode(site, None, training), forked_rng(), torch.no_grad():
                with _Trace() as trace:
                    _run_hook(site, inputs)
        except Exception:
            return False
        shapes.append([
            (getattr(f, "__qualname__", repr(f)), _constants_of(args), _constants_of(kwargs))
            for f, args, kwargs, _ in trace.calls
        ])
    return shapes[0] != shapes[1]


def _constants_of(value: Any) -> Any:
    """The non-tensor parts of a call's arguments, comparable with ``==`` (tensors, also
    inside lists and dicts, become a marker)."""
    leaves, spec = _pytree.tree_flatten(value)
    return str(spec), tuple("<tensor>" if isinstance(v, Tensor) else repr(v) for v in leaves)


# --------------------------------------------------------------------------------------
# torch.export capture
# --------------------------------------------------------------------------------------


class _Callee(nn.Module):
    """What torch.export traces: the hook applied to flattened tensor inputs."""

    def __init__(self, site: Site, in_spec: Any, template: list) -> None:
        super().__init__()
        self.host = site.host
        self._hook_site = site
        self._in_spec = in_spec
        self._template = template

    def forward(self, xs: list[Tensor]) -> tuple[Tensor, ...]:
        it = iter(xs)
        stand_ins = iter(self._stand_ins)
        leaves = [next(it) if v == W.TENSOR else next(stand_ins) if v == W.OPAQUE else v for v in self._template]
        inputs = _tree.unflatten(leaves, self._in_spec)
        result = _run_hook(self._hook_site, tuple(inputs))
        try:
            out_leaves, out_spec = _tree.flatten(result)
        except _tree.TreeError as exc:
            raise _CaptureError(f"its results cannot be stored: {exc}") from None
        # what each result is, as traced: a stand-in is an input passed along unread
        self.__dict__["_traced_out"] = (out_spec, [
            ("tensor", None) if isinstance(v, Tensor) else ("input", v.index) if isinstance(v, _Untouchable)
            else ("plain", v) if _is_plain(v) else ("made", type(v).__name__) for v in out_leaves])
        return tuple(v for v in out_leaves if isinstance(v, Tensor))

    @property
    def _stand_ins(self) -> list[_Untouchable]:
        return self.__dict__.setdefault("_stand_in_objects", [
            _Untouchable(i) for i, v in enumerate(self._template) if v == W.OPAQUE])


class _Untouchable:
    """Stands in for an input that a captured graph cannot carry (a KV cache, a config): a
    hook may pass it along, but any use of it fails the capture."""

    __slots__ = ("index",)
    index: int

    def __init__(self, index: int) -> None:
        object.__setattr__(self, "index", index)

    def _touched(self, *args: Any, **kwargs: Any) -> Any:
        raise _CaptureError("it reads an input that is neither a tensor nor a plain value, which a captured "
                            "graph cannot carry")

    __getattr__ = __setattr__ = __call__ = __iter__ = __len__ = __bool__ = __getitem__ = _touched
    __eq__ = __lt__ = __add__ = __mul__ = __index__ = __int__ = __float__ = _touched  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]


def _is_plain(v: Any) -> bool:
    return isinstance(v, (type(None), bool, int, str)) or (isinstance(v, float) and math.isfinite(v))


def _leaf_template(leaves: list[Any], *, bake_plain: bool) -> list:
    """Tensors are graph inputs; with ``bake_plain`` plain values (None, numbers, strings) are
    fixed in the graph, otherwise they too are passed along without being read."""
    return [W.TENSOR if isinstance(v, Tensor) else v if bake_plain and _is_plain(v) else W.OPAQUE for v in leaves]


def _out_template(traced: list[tuple[str, Any]], template: list) -> list:
    """Results, as the traced hook gave them: tensors (graph outputs), inputs it passed
    along unread (``{"opaque": k}``: the k-th opaque input, whatever it is at run time, a
    flag such as ``output_attentions`` included), or plain values it made (fixed)."""
    opaque = [i for i, v in enumerate(template) if v == W.OPAQUE]
    out: list = []
    for kind, value in traced:
        if kind == "tensor":
            out.append(W.TENSOR)
        elif kind == "input" and value in opaque:
            out.append({"opaque": opaque.index(value)})
        elif kind == "plain":
            out.append(value)
        else:
            raise _CaptureError(f"it returns a {value if kind == 'made' else 'value'} that it made itself, which a "
                                f"captured graph cannot carry")
    return out


class _CaptureError(Exception):
    pass


def _explain_export_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "data-dependent" in lowered or "guardondatadependent" in lowered or "data dependent" in lowered:
        return "it has data-dependent Python control flow (such as `if tensor.sum() > 0:`), which torch.export cannot capture"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"torch.export could not capture it ({first[:300]})"


def _is_mutating(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


# Uninitialised memory is never stored: these become their zero-filled twins (a hook that
# reads uninitialised memory would have failed validation against itself anyway).
_ZERO_FILLED = {
    torch.ops.aten.empty_like.default: torch.ops.aten.zeros_like.default,
    torch.ops.aten.new_empty.default: torch.ops.aten.new_zeros.default,
    torch.ops.aten.empty.memory_format: torch.ops.aten.zeros.default,
}


def _zero_fill_empties(graph: Any) -> None:
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _ZERO_FILLED:
            if node.target is torch.ops.aten.empty.memory_format:
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "memory_format"}
            node.target = _ZERO_FILLED[node.target]


def _graph_inputs(ep: Any, template: list) -> tuple[list, list, list, list[str], list[Tensor], list[int]]:
    """The exported graph's inputs: the user tensors it reads (an unread one is passed
    along instead, and ``template`` says so), the host module's tensors it reads, and its
    constants. Anything else (a parameter that is not the host's, a mutation) is refused."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user, host, consts = [], [], []
    const_values: list[Tensor] = []
    host_names: list[str] = []
    user_slots: list[int] = []
    tensor_slots = iter([i for i, v in enumerate(template) if v == W.TENSOR])
    for node, spec in zip(placeholders, sig.input_specs):
        if spec.kind == InputKind.USER_INPUT:
            slot = next(tensor_slots)
            if node.users:
                user.append(node)
                user_slots.append(slot)
            else:
                template[slot] = W.OPAQUE
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            if node.users:
                if not spec.target.startswith("host."):
                    raise _CaptureError(f"it reads {spec.target}, which is not a tensor of its module")
                host.append(node)
                host_names.append(spec.target[len("host."):])
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            if node.users:
                consts.append(node)
                const_values.append(ep.constants[spec.target].detach().clone())
        elif node.users:
            raise _CaptureError(f"it uses a {spec.kind.name.lower()} input, which a captured graph cannot carry")
    for spec in sig.output_specs:
        if spec.kind in (OutputKind.BUFFER_MUTATION, OutputKind.PARAMETER_MUTATION):
            raise _CaptureError(f"it modifies {spec.target} of its module in place (a side effect)")
    return user, host, consts, host_names, const_values, user_slots


def _shape_contract(ep: Any, user: list, recorded: list[Tensor]) -> tuple[list[list[int | str | None]], dict]:
    """What sizes the exported graph accepts: for each graph input (``user``, recorded at
    ``recorded``), every dimension as the size export specialised it to (an int) or a
    symbol (``d0``, ``d1``...: dimensions with one symbol must agree). Symbols carry
    export's range and their size at capture, and the dtypes of the inputs are recorded
    with them: the signature that a load checks the graph on."""
    import sympy

    names: dict[Any, str] = {}
    captured: dict[str, int] = {}
    dims: list[list[int | str | None]] = []
    for node, value in zip(user, recorded):
        row: list[int | str | None] = []
        for d, size in enumerate(node.meta["val"].shape):
            expr = size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))
            if expr.is_Integer:
                row.append(int(expr))
            else:  # a symbol, or a size export derived from others (2 * s0): a symbol of its own
                name = names.setdefault(expr, f"d{len(names)}")
                captured.setdefault(name, int(value.shape[d]))
                row.append(name)
        dims.append(row)
    symbols: dict[str, dict[str, Any]] = {}
    for expr, name in names.items():
        rng = ep.range_constraints.get(expr) if expr.is_Symbol else None
        low = _finite_int(rng.lower) if rng is not None else None
        high = _finite_int(rng.upper) if rng is not None else None
        # not above the size at capture: a batch of 1 is traced as 2 (see batch_of_two), and the
        # recorded calls, at the size at capture, are checked against the hook
        symbols[name] = {"min": min(max(low or 0, 0), captured[name]), "max": high, "captured": captured[name]}
    return dims, symbols


def _finite_int(value: Any) -> int | None:
    """A bound of export's value ranges as an int, or None where it is unbounded."""
    if not getattr(value, "is_Integer", isinstance(value, int)):
        return None  # sympy's oo and torch's int_oo
    number = int(value)
    return number if abs(number) < 2**40 else None


# Ops whose size argument aten types as ``int``, not ``SymInt``: tracing them with a symbolic
# size would specialise it. During capture they are traced as a twin taking a SymInt, and
# the twin is renamed back to the aten op in the graph, which then computes the size at run
# time (the same kernel, so the same bits).
_SIZE_TWINS: dict[Any, Any] = {}
_TWIN_LIBRARY: Any = None


def _size_twins() -> dict[Any, Any]:
    """``{twin op: aten op}``, defined once per process in the ``hookwrap`` op namespace."""
    global _TWIN_LIBRARY
    if not _SIZE_TWINS:
        lib = torch.library.Library("hookwrap", "FRAGMENT")
        lib.define("linspace(Scalar start, Scalar end, SymInt steps, *, ScalarType? dtype=None, Layout? layout=None, "
                   "Device? device=None, bool? pin_memory=None) -> Tensor")

        def run(start: Any, end: Any, steps: Any, **kwargs: Any) -> Tensor:
            return torch.ops.aten.linspace.default(start, end, int(steps), **kwargs)

        def fake(start: Any, end: Any, steps: Any, *, dtype: Any = None, layout: Any = None, device: Any = None,
                 pin_memory: Any = None) -> Tensor:
            return torch.empty(steps, dtype=dtype or torch.get_default_dtype(), device=device)

        lib.impl("linspace", run, "CompositeExplicitAutograd")
        torch.library.register_fake("hookwrap::linspace", fake, lib=lib)
        _TWIN_LIBRARY = lib
        _SIZE_TWINS[torch.ops.hookwrap.linspace.default] = torch.ops.aten.linspace.default
    return _SIZE_TWINS


class _SymbolicSizes(TorchFunctionMode):
    """Routes ``torch.linspace`` with a symbolic step count to its SymInt twin while export traces."""

    _NAMES = ("start", "end", "steps")
    _OPTIONS = frozenset({"dtype", "layout", "device", "pin_memory"})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.linspace and len(args) <= 3:
            bound = {**dict(zip(self._NAMES, args)), **{k: v for k, v in kwargs.items() if k in self._NAMES}}
            rest = {k: v for k, v in kwargs.items() if k not in self._NAMES}
            if len(bound) == 3 and set(rest) <= self._OPTIONS and isinstance(bound["steps"], torch.SymInt) \
                    and all(isinstance(bound[k], (int, float)) for k in ("start", "end")):
                return torch.ops.hookwrap.linspace.default(bound["start"], bound["end"], bound["steps"], **rest)
        return func(*args, **kwargs)


def _untwin(graph: Any) -> None:
    twins = _size_twins()
    for node in graph.nodes:
        if node.op == "call_function" and node.target in twins:
            node.target = twins[node.target]


def _export(callee: nn.Module, example: list[Tensor]) -> Any:
    """``torch.export`` of ``callee`` with every dimension of every input symbolic (export
    specialises the ones the hook fixes); if that fails, with only the batch dimension
    symbolic, which an older torch needed for some hooks. Functionalised if it mutates."""
    from torch.export import Dim, export

    _size_twins()
    every = [{d: Dim.AUTO for d in range(t.dim())} if t.dim() >= 1 else None for t in example]
    batch = [{0: Dim.AUTO} if t.dim() >= 1 else None for t in example]
    first: BaseException | None = None
    for dynamic in (every, batch):
        try:
            with quiet():
                with _SymbolicSizes():
                    ep = export(callee, (example,), dynamic_shapes=(dynamic,), strict=False)
                if any(_is_mutating(n.target) for n in ep.graph.nodes if n.op == "call_function"):
                    ep = ep.run_decompositions({})  # functional ops only: no write to any tensor
            _untwin(ep.graph)
            return ep
        except _CaptureError:
            raise
        except Exception as exc:
            first = first or exc
    assert first is not None
    raise first


def _capture(site: Site, call: Call, *, bake_plain: bool, budget: int) -> W.CapturedHook:
    """Export the hook's body on the recorded call into a CapturedHook.

    Without ``bake_plain``, every input that is not a tensor (None, flags, a KV cache) is a
    stand-in that fails the capture if the hook reads it: the graph then depends on tensors
    only, and at run time those inputs may be anything. Tensor inputs the graph never uses
    are passed along the same way. With ``bake_plain``, plain values are fixed in the graph
    and checked at run time."""
    from torch.export.graph_signature import OutputKind

    from ._graph import GraphFormatError, encode

    inputs = _clone_tree(call.inputs)
    tree = tuple(inputs)
    with forked_rng(), torch.no_grad(), _host_mode(site, None, False):
        result = _run_hook(site, _clone_tree(tree))
    try:
        leaves, in_spec = _tree.flatten(tree)
        out_spec = _tree.flatten(result)[1]
    except _tree.TreeError as exc:
        raise _CaptureError(f"its inputs or results cannot be stored: {exc}") from None
    template = _leaf_template(leaves, bake_plain=bake_plain)
    example = batch_of_two([v for v in leaves if isinstance(v, Tensor)])
    callee = _Callee(site, in_spec, template)
    try:
        with _host_mode(site, None, False):
            ep = _export(callee, example)
    except _CaptureError:
        raise
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            if isinstance(cause, _CaptureError):
                raise cause from None
        raise _CaptureError(_explain_export_error(exc)) from None
    _zero_fill_empties(ep.graph)

    user, host, consts, host_names, const_values, user_slots = _graph_inputs(ep, template)
    input_dims, symbols = _shape_contract(ep, user, [leaves[i] for i in user_slots])
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    user_outputs = [value for value, spec in zip(output_node.args[0], ep.graph_signature.output_specs)
                    if spec.kind == OutputKind.USER_OUTPUT]
    traced_spec, traced = callee.__dict__["_traced_out"]
    if traced_spec != out_spec:
        raise _CaptureError(f"its results are shaped {traced_spec} when traced but {out_spec} when run")
    out_template = _out_template(traced, template)
    try:
        graph_json = encode(ep.graph, user + host + consts, user_outputs)
    except GraphFormatError as exc:
        raise _CaptureError(f"its captured graph cannot be stored: {exc}") from None
    try:  # the same checks as a load: capture never makes a file that load would refuse
        wrapper = W.CapturedHook(
            graph=graph_json, position=site.position, with_kwargs=site.with_kwargs,
            in_spec=in_spec.to_json(), in_template=template,
            out_spec=out_spec.to_json(), out_template=out_template,
            host_tensors=host_names,
            constants={f"c{i}": {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                       for i, v in enumerate(const_values)},
            name=site.info.name, input_dims=input_dims, symbols=symbols,
            input_dtypes=[str(leaves[i].dtype).removeprefix("torch.") for i in user_slots],
        )
    except InvalidArgumentError as exc:
        raise _CaptureError(f"its captured graph cannot be stored: {exc}") from None
    with torch.no_grad():
        for i, value in enumerate(const_values):
            getattr(wrapper, f"c{i}").copy_(value)
    try:  # the static check a load runs: capture never makes a graph that load refuses
        wrapper.check_graph(site.host, budget=budget)
    except InvalidArgumentError as exc:
        raise _CaptureError(f"its captured graph would be refused at load: {exc}") from None
    return wrapper


# --------------------------------------------------------------------------------------
# The decision for one site
# --------------------------------------------------------------------------------------

_FIX_REWRITE = (
    "rewrite the hook as a pure function of its tensors, use a hookwrap hook "
    "(hw.hooks.*), or register a converter with hw.register_converter"
)


def convert_site(site: Site, calls: list[Call] | None, *, budget: int) -> Outcome:
    """Decide what a forward hook becomes: a wrapper (``CONVERT``), nothing (``STRIP``: an
    observer, or a hook with no effect) or a blocker (``UNSUPPORTED``)."""
    if calls is None:
        return Outcome(Plan.UNSUPPORTED, "it needs example inputs to be captured, and none were given.",
                       fix="pass example_inputs to hw.convert (a tuple, like torch.onnx.export takes)")
    if not calls:
        return Outcome(Plan.UNSUPPORTED, "it never ran while example_inputs went through the model, so there is "
                                         "nothing to capture.",
                       fix="pass example_inputs that reach this module, or use a hookwrap hook / converter")
    n = len(calls)
    first_look = _classify_calls(calls)
    if first_look is not None:
        return first_look
    recorded = [c for c in calls if c.inputs is not None]
    first = recorded[0]
    recognition = _recognise(site, first)
    if recognition.no_effect and _validate_noop(site, recorded):
        return Outcome(Plan.STRIP, "has no effect on outputs in train or eval mode", calls=n)
    if recognition.wrapper is not None and _validate(site, recognition.wrapper, recorded) is None \
            and _sizes_agree(site, recognition.wrapper, first):
        return Outcome(Plan.CONVERT, f"recognised as {_describe(recognition.wrapper)}", recognition.wrapper, calls=n)
    if _mode_dependent(site, first):
        return Outcome(Plan.UNSUPPORTED, "it runs different operations in train and eval mode; a captured graph "
                                         "holds one of them.",
                       fix="make the hook independent of module.training, or use hw.hooks.Dropout*/GaussianNoise", calls=n)
    problem = ""
    for bake_plain in (False, True):  # first with every non-tensor input passed along unread
        try:
            captured = _capture(site, first, bake_plain=bake_plain, budget=budget)
        except _CaptureError as exc:
            problem = str(exc)
            continue
        problem = _validate(site, captured, recorded) or _generalise(site, captured, first) or ""
        if not problem:
            break
    if problem:
        return Outcome(Plan.UNSUPPORTED, f"{problem}.", fix=_FIX_REWRITE, calls=n)
    captured.open_kwargs = site.with_kwargs and _passes_other_kwargs(site, first)
    ops = len(captured.config()["graph"]["nodes"])
    return Outcome(Plan.CONVERT, f"captured with torch.export as CapturedHook ({ops} ops){recognition.note}",
                   captured, calls=n)


class _OtherKwarg:
    """A keyword argument the hook was not captured with (see :func:`_passes_other_kwargs`)."""


def _passes_other_kwargs(site: Site, call: Call) -> bool:
    """True if the ``with_kwargs`` hook, given one more keyword argument than it was recorded
    with, computes the same and (a pre-hook) passes that argument on untouched: libraries
    forward call options such as ``output_hidden_states`` to their layers as keywords."""
    key, extra = "hookwrap_other_kwarg", _OtherKwarg()
    results = []
    for add in (False, True):
        inputs = list(_fresh(call))
        if add:
            inputs[1] = {**inputs[1], key: extra}
        with _host_mode(site, None, False), forked_rng(), torch.no_grad():
            reseed(_SEED)
            try:
                results.append(_run_hook(site, tuple(inputs)))
            except Exception:
                return False
    plain, got = results
    if site.position == "post":
        return first_difference(got, plain) is None
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], dict) and got[1].get(key) is extra):
        return False
    return first_difference((got[0], {k: v for k, v in got[1].items() if k != key}), plain) is None


def _classify_calls(calls: list[Call]) -> Outcome | None:
    """The decisions that the recorded calls alone settle: observers, and hooks with side
    effects a module cannot reproduce."""
    n = len(calls)
    changed_tensors = any(not c.returned_none or c.mutated for c in calls)
    side = next((c.side_effect for c in calls if c.side_effect), None)
    if not changed_tensors:
        why = "observer: returned None and changed no tensor"
        if side:
            why += f"; it {side}, which a saved or exported model cannot keep"
        return Outcome(Plan.STRIP, why, calls=n, side_effect=bool(side))
    if side:
        return Outcome(Plan.UNSUPPORTED, f"it changes outputs and also {side}; a module cannot reproduce that side "
                                         f"effect.", fix=_FIX_REWRITE, calls=n)
    bad_mut = sorted({m for c in calls if not c.own_activation for m in c.mutated if m != "output"})
    if bad_mut:
        return Outcome(Plan.UNSUPPORTED, f"it modifies its {', '.join(bad_mut)} in place after the module ran, "
                                         f"which the module's caller may still use; a module cannot reproduce that.",
                       fix="return new tensors instead of modifying the module's inputs in place", calls=n)
    return None


def _validate_noop(site: Site, calls: list[Call]) -> bool:
    for call in calls:
        for training in (False, True):
            with _host_mode(site, None, training), forked_rng(), torch.no_grad():
                inputs = _clone_tree(call.inputs)
                original = _clone_tree(call.inputs)
                result = _run_hook(site, inputs)
            expected = original[-1] if site.position == "post" else (
                (original[0], original[1]) if site.with_kwargs else original[0])
            if first_difference(result, expected) is not None:
                return False
    return True


def _describe(wrapper: W.Wrapper) -> str:
    return repr(wrapper).replace("\n", " ").replace("  ", "")
