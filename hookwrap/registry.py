"""The one typed registry of hook sources: who put a hook there, and what becomes of it.

:data:`SOURCES` is an ordered list of rule objects, first match wins. Each
:class:`Source` declares how it matches a hook (:meth:`Source.matches`), its plan and
reason (:meth:`Source.plan`), how it names the hook and the module for people
(:meth:`Source.name`, :meth:`Source.alias`), and, for its plan, how it bakes
(:meth:`Source.bake`) or which wrapper stands for it (:meth:`Source.build`).
``inventory``, ``plan``, ``strip`` and ``convert`` read only from here; kinds and plans are
enums (:class:`~hookwrap.report.Kind`, :class:`~hookwrap.report.Plan`). Adding a source
is one class and one line in :data:`SOURCES`.

The order: process-owned and gradient hooks; hookwrap's own hook objects; user
converters (:func:`register_converter`); PyTorch utilities (pruning, both weight_norm and
both spectral_norm APIs, parametrizations, quantization observers and fake quantization);
library hooks (timm's FeatureHooks, transformers' output capturing, the input-grad hooks
of transformers and PEFT, TransformerLens HookPoints); other state-dict hooks; capture as
the fallback. Library classes are looked up only in modules already imported, so nothing
here imports an optional library.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize, prune, remove_spectral_norm, remove_weight_norm
from torch.nn.utils.spectral_norm import (
    SpectralNorm,
    SpectralNormLoadStateDictPreHook,
    SpectralNormStateDictHook,
)
from torch.nn.utils.weight_norm import WeightNorm

from . import wrappers as W
from ._torch import unwrap_hook
from .errors import HookwrapError, InvalidArgumentError
from .hooks import Hook
from .report import Kind, Plan

__all__ = ["register_converter", "ConverterHandle", "find_converter", "HookRef", "Source", "SOURCES", "source_for",
           "GLOBAL_REASON", "CAPTURE_REASON"]


# --------------------------------------------------------------------------------------
# User converters
# --------------------------------------------------------------------------------------

_lock = threading.Lock()


@dataclass(frozen=True)
class _Converter:
    match: Callable[[Any], bool]
    build: Callable[[Any, nn.Module], nn.Module]
    wrapper: type
    label: str


_CONVERTERS: list[_Converter] = []


class ConverterHandle:
    """Returned by :func:`register_converter`; ``remove()`` unregisters (idempotent)."""

    def __init__(self, converter: _Converter) -> None:
        self._converter = converter

    def remove(self) -> None:
        with _lock:
            if self._converter in _CONVERTERS:
                _CONVERTERS.remove(self._converter)
            still_used = any(c.wrapper is self._converter.wrapper for c in _CONVERTERS)
        if not still_used:
            W.unregister_wrapper(self._converter.wrapper)

    def __enter__(self) -> ConverterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register_converter(
    match: type | Callable[[Any], bool],
    build: Callable[[Any, nn.Module], nn.Module],
    *,
    wrapper: type[W.Wrapper],
) -> ConverterHandle:
    """Teach ``convert`` (and ``load``) about a hook type of your own.

    Args:
        match: a hook class (instances and bound methods of it match), or a predicate
            ``hook -> bool``.
        build: ``(hook, module) -> wrapper`` returning an instance of ``wrapper``.
        wrapper: the :class:`hookwrap.wrappers.Wrapper` subclass that ``build`` returns;
            it is registered by its ``kind`` so that files naming it can be loaded.

    Returns:
        A :class:`ConverterHandle`; ``remove()`` or ``with`` unregisters.

    Raises:
        InvalidArgumentError: ``match`` or ``build`` is not usable, or ``wrapper`` is not
            a Wrapper type with a free ``kind``.

    Example:
        >>> class Temperature:
        ...     def __init__(self, t): self.t = t
        ...     def __call__(self, module, args, out): return out / self.t
        >>> handle = hw.register_converter(Temperature, lambda h, m: hw.wrappers.Scale(divisor=h.t),
        ...                                wrapper=hw.wrappers.Scale)
    """
    predicate: Callable[[Any], bool]
    if isinstance(match, type):
        hook_type = match

        def of_type(hook: Any) -> bool:
            target = getattr(hook, "__self__", hook)
            return isinstance(target, hook_type)

        predicate = of_type
        label = hook_type.__qualname__
    elif callable(match):
        predicate = match
        label = getattr(match, "__qualname__", repr(match))
    else:
        raise InvalidArgumentError(f"match must be a class or a predicate, got {match!r}")
    if not callable(build):
        raise InvalidArgumentError(f"build must be callable (hook, module) -> Wrapper, got {build!r}")
    W.register_wrapper(wrapper)
    conv = _Converter(predicate, build, wrapper, label)
    with _lock:
        _CONVERTERS.append(conv)
    return ConverterHandle(conv)


def find_converter(hook: Any) -> _Converter | None:
    """The first registered converter whose ``match`` accepts ``hook``."""
    with _lock:
        converters = list(_CONVERTERS)
    for conv in converters:
        try:
            if conv.match(hook):
                return conv
        except Exception:  # a user predicate that raises simply does not match
            continue
    return None


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookRef:
    """A registered hook as the sources see it: its kind, the callable as registered, what
    it unwraps to (through ``functools.partial`` and torch's wrappers), and its owner (a
    module, a tensor, or None for a global hook). For a parametrization, ``hook`` is the
    ``ParametrizationList`` and ``attr`` the tensor it parametrizes."""

    kind: Kind
    hook: Any
    owner: Any
    attr: str = ""

    @property
    def target(self) -> Any:
        return unwrap_hook(self.hook)

    @property
    def bound_to(self) -> Any:
        """The object a bound-method hook belongs to (or the hook object itself)."""
        target = self.target
        return getattr(target, "__self__", target)


GLOBAL_REASON = ("global hook: it belongs to the process, not to the model, and stays registered; "
                 "convert(..., global_hooks='convert') turns it into wrappers and removes it from the process")
CAPTURE_REASON = ("captured from example_inputs: it becomes a wrapper, is stripped as an observer or is refused, "
                  "which hw.inventory(model, example_inputs) tells")


class Source:
    """One source of hooks. Subclasses set ``origin`` (the name the inventory shows) and
    override what applies to them."""

    origin: ClassVar[str] = "user"
    #: the rule as the docs list it
    label: ClassVar[str] = ""

    def matches(self, ref: HookRef) -> bool:
        raise NotImplementedError

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        """The plan and the reason, as far as they are known without running the model."""
        raise NotImplementedError

    def origin_of(self, ref: HookRef) -> str:
        return self.origin

    def name(self, ref: HookRef) -> str:
        """The hook's qualified name, as the user knows it."""
        target = ref.target
        qual = getattr(target, "__qualname__", None)
        if isinstance(qual, str) and not isinstance(target, type):
            return qual
        return type(target).__qualname__

    def alias(self, ref: HookRef) -> str | None:
        """The name the user gave the hooked module, where a library wraps modules."""
        return None

    def aliases(self, model: nn.Module) -> dict[int, str]:
        """``{id(module): the names the user knows it by}`` for a whole model, where the
        library keeps such a table (read once per listing)."""
        return {}

    def bake(self, ref: HookRef) -> str:
        """Make a weight transform permanent; return what was done."""
        raise HookwrapError(f"{self.label or type(self).__name__} has nothing to bake")

    def build(self, ref: HookRef, host: nn.Module) -> W.Wrapper:
        """The wrapper that stands for the hook (``CONVERT`` sources)."""
        raise HookwrapError(f"{self.label or type(self).__name__} has no wrapper to build")

    def decided(self, ref: HookRef, wrapper: W.Wrapper) -> str:
        """What the conversion report says of a hook this source turned into ``wrapper``."""
        return f"{self.plan(ref)[1]} -> {wrapper!r}"

    def fix(self) -> str:
        """How to unblock a hook this source refuses."""
        return ""

    @property
    def machinery(self) -> bool:
        """A hook of the model's own library that serves a call option: it stays."""
        return False

    @property
    def stores_for_forward(self) -> bool:
        """A hook whose stored values the model's own forward reads back."""
        return False

    @property
    def reinstalled(self) -> bool:
        """A hook the model's own library installs again whenever it needs it: a base model
        that carries it is not a hooked model."""
        return self.machinery


def _loaded(module: str, name: str) -> Any:
    """An attribute of a module that is already imported, or None (nothing is imported)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _inner_codes(*functions: Any) -> set[types.CodeType]:
    """The code objects defined inside ``functions`` (closures they create)."""
    out: set[types.CodeType] = set()
    stack = [getattr(f, "__code__", None) for f in functions]
    while stack:
        code = stack.pop()
        if not isinstance(code, types.CodeType):
            continue
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                out.add(const)
                stack.append(const)
    return out


class GlobalHooks(Source):
    origin, label = "user", "global module hooks: kept (they belong to the process)"

    def matches(self, ref: HookRef) -> bool:
        return ref.kind.is_global and ref.kind.is_forward

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.KEEP, GLOBAL_REASON

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)


class GradientHooks(Source):
    origin, label = "user", "backward and tensor hooks: stripped (they do not change outputs)"

    def matches(self, ref: HookRef) -> bool:
        return ref.kind.is_gradient

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.STRIP, "gradient hook: does not change forward outputs"

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)


class HookwrapHooks(Source):
    origin, label = "hookwrap", "hookwrap hook objects (hw.hooks.*): converted to their wrapper"

    def matches(self, ref: HookRef) -> bool:
        return ref.kind.is_forward and isinstance(ref.bound_to, Hook)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.CONVERT, f"hookwrap hook -> {ref.bound_to!r}"

    def build(self, ref: HookRef, host: nn.Module) -> W.Wrapper:
        return ref.bound_to.to_module()

    def decided(self, ref: HookRef, wrapper: W.Wrapper) -> str:
        return f"hookwrap hook -> {wrapper!r}"


class UserConverters(Source):
    origin, label = "user", "converters registered with hw.register_converter: converted by them"

    def matches(self, ref: HookRef) -> bool:
        return ref.kind.is_forward and find_converter(ref.target) is not None

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        conv = find_converter(ref.target)
        assert conv is not None
        return Plan.CONVERT, f"registered converter for {conv.label} -> {conv.wrapper.__name__}"

    def decided(self, ref: HookRef, wrapper: W.Wrapper) -> str:
        conv = find_converter(ref.target)
        return f"registered converter for {conv.label if conv else '?'} -> {wrapper!r}"

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)

    def build(self, ref: HookRef, host: nn.Module) -> W.Wrapper:
        conv = find_converter(ref.target)
        if conv is None:
            raise HookwrapError("the converter was unregistered meanwhile")
        try:
            wrapper = conv.build(ref.target, host)
        except Exception as exc:
            raise HookwrapError(f"the converter registered for {conv.label} raised {type(exc).__name__}: "
                                f"{exc}.") from None
        if not isinstance(wrapper, conv.wrapper) or not isinstance(wrapper, W.Wrapper):
            raise HookwrapError(f"the converter registered for {conv.label} returned {type(wrapper).__name__}, "
                                f"not the declared wrapper type {conv.wrapper.__name__}.")
        return wrapper


class Pruning(Source):
    origin, label = "prune", "torch.nn.utils.prune: baked with prune.remove"

    def matches(self, ref: HookRef) -> bool:
        return ref.kind is Kind.FORWARD_PRE and isinstance(ref.target, prune.BasePruningMethod)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.BAKE, "pruning mask: made permanent with torch.nn.utils.prune.remove"

    def bake(self, ref: HookRef) -> str:
        name = ref.target._tensor_name
        prune.remove(ref.owner, name)
        return f"pruning of {name!r} made permanent (prune.remove)"


class WeightNormHook(Source):
    origin, label = "weight_norm", "torch.nn.utils.weight_norm (the hook API): baked with remove_weight_norm"

    def matches(self, ref: HookRef) -> bool:
        return isinstance(ref.target, WeightNorm)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.BAKE, "weight_norm: made permanent with torch.nn.utils.remove_weight_norm"

    def bake(self, ref: HookRef) -> str:
        remove_weight_norm(ref.owner, ref.target.name)
        return f"weight_norm of {ref.target.name!r} made permanent (remove_weight_norm)"


class SpectralNormHook(Source):
    origin, label = "spectral_norm", "torch.nn.utils.spectral_norm (the hook API): baked with remove_spectral_norm"

    def matches(self, ref: HookRef) -> bool:
        return isinstance(ref.target, (SpectralNorm, SpectralNormStateDictHook, SpectralNormLoadStateDictPreHook))

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        if ref.kind.is_forward:
            return Plan.BAKE, "spectral_norm: made permanent with torch.nn.utils.remove_spectral_norm"
        return Plan.BAKE, "part of spectral_norm: removed with remove_spectral_norm"

    def bake(self, ref: HookRef) -> str:
        target = ref.target
        name = target.name if hasattr(target, "name") else target.fn.name
        remove_spectral_norm(ref.owner, name)
        return f"spectral_norm of {name!r} made permanent (remove_spectral_norm)"


_PARAMETRIZATION_ORIGINS = {"_WeightNorm": "weight_norm", "_SpectralNorm": "spectral_norm",
                            "_Orthogonal": "orthogonal"}


class Parametrizations(Source):
    origin, label = "parametrization", ("torch.nn.utils.parametrize (parametrizations.weight_norm, spectral_norm, "
                                        "orthogonal, register_parametrization): baked with "
                                        "remove_parametrizations(leave_parametrized=True)")

    def matches(self, ref: HookRef) -> bool:
        if ref.kind is Kind.PARAMETRIZATION:
            return True
        # parametrizations.weight_norm's hook that reads old weight_g/weight_v state dicts
        return ref.kind is Kind.LOAD_STATE_DICT_PRE and getattr(ref.target, "__module__", "") == \
            "torch.nn.utils.parametrizations" and getattr(ref.target, "__name__", "") == "_weight_norm_compat_hook"

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        if ref.kind is not Kind.PARAMETRIZATION:
            return Plan.BAKE, "part of parametrizations.weight_norm: removed with it"
        return Plan.BAKE, (f"parametrization of {ref.attr!r}: made permanent with torch.nn.utils.parametrize."
                           f"remove_parametrizations(leave_parametrized=True)")

    def origin_of(self, ref: HookRef) -> str:
        if ref.kind is not Kind.PARAMETRIZATION:
            return "weight_norm"
        known = {_PARAMETRIZATION_ORIGINS.get(type(p).__name__, "parametrization") for p in ref.hook}
        return known.pop() if len(known) == 1 else "parametrization"

    def name(self, ref: HookRef) -> str:
        if ref.kind is not Kind.PARAMETRIZATION:
            return super().name(ref)
        return "+".join(type(p).__qualname__ for p in ref.hook)

    def bake(self, ref: HookRef) -> str:
        # A parametrized module's class (ParametrizedLinear) holds the tensor as a property,
        # and a deep copy shares that class: removing the property from it would break the
        # original model too. The module gets a class of its own first.
        cls = type(ref.owner)
        own = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        ref.owner.__class__ = type(cls.__name__, cls.__bases__, own)
        parametrize.remove_parametrizations(ref.owner, ref.attr, leave_parametrized=True)
        return f"parametrization of {ref.attr!r} made permanent (remove_parametrizations, leave_parametrized=True)"


class Quantization(Source):
    origin, label = "quantization", ("torch.ao.quantization observers: fake quantization frozen with "
                                     "disable_observer becomes a FakeQuantize wrapper; plain observers are "
                                     "stripped; a fake quantizer still observing is refused")

    def matches(self, ref: HookRef) -> bool:
        module = getattr(ref.target, "__module__", None) or ""
        return ref.kind.is_forward and module.startswith(("torch.ao.quantization", "torch.quantization",
                                                          "torch.ao.nn"))

    def _observer(self, ref: HookRef) -> Any:
        return getattr(ref.owner, "activation_post_process", None) if isinstance(ref.owner, nn.Module) else None

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        fake_base = _loaded("torch.ao.quantization.fake_quantize", "FakeQuantizeBase")
        observer = self._observer(ref)
        if fake_base is not None and isinstance(observer, fake_base):
            if int(observer.observer_enabled[0]) == 1:
                return Plan.UNSUPPORTED, ("quantization-aware training fake quantizer that is still observing: its "
                                          "scale and zero point change on every call, so no module can stand for "
                                          "it. Freeze it first")
            if int(observer.fake_quant_enabled[0]) == 0:
                return Plan.STRIP, "fake quantization disabled (disable_fake_quant): it returns its input"
            return Plan.CONVERT, "frozen fake quantization: a FakeQuantize with its scale and zero point"
        return Plan.STRIP, ("quantization observer: it records statistics and returns its input unchanged; "
                            "stripped (to quantize, calibrate and use torch.ao.quantization.convert)")

    def fix(self) -> str:
        return ("freeze the observers before converting: model.apply(torch.ao.quantization.disable_observer) "
                "(and model.eval())")

    def build(self, ref: HookRef, host: nn.Module) -> W.Wrapper:
        observer = self._observer(ref)
        scale, zero_point = observer.scale.detach(), observer.zero_point.detach()
        per_channel = scale.numel() > 1 or getattr(observer, "is_per_channel", False)
        wrapper = W.FakeQuantize(int(observer.quant_min), int(observer.quant_max), channels=int(scale.numel()),
                                 axis=int(observer.ch_axis) if per_channel else None)
        with torch.no_grad():
            wrapper.get_buffer("scale").copy_(scale.float().reshape(-1))
            wrapper.get_buffer("zero_point").copy_(zero_point.to(torch.int32).reshape(-1))
        return wrapper


class TorchScriptModules(Source):
    origin, label = "user", "hooks on TorchScript modules: refused (their forward cannot be wrapped)"

    def matches(self, ref: HookRef) -> bool:
        return ref.kind.is_forward and isinstance(ref.owner, torch.jit.ScriptModule)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.UNSUPPORTED, "hook on a TorchScript module, whose forward cannot be wrapped"

    def fix(self) -> str:
        return "remove the hook, or script the module after hooking"

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)


class TimmFeatureHooks(Source):
    origin, label = "timm", ("timm FeatureHooks (features_only, feature_cls='hook'): refused, the model's forward "
                             "reads back what they store; export_onnx exports the hooked model inline")

    def matches(self, ref: HookRef) -> bool:
        cls = _loaded("timm.models._features", "FeatureHooks")
        return cls is not None and isinstance(ref.bound_to, cls)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.UNSUPPORTED, ("timm's FeatureHooks return None and store each tapped output in a dict: the "
                                  "model's own forward reads back what it stores and returns it, so a module cannot "
                                  "carry that side effect.")

    def fix(self) -> str:
        return ("timm rebuilds these hooks whenever it creates the model, so save its weights as they are "
                "(safetensors.torch.save_model) and export it with hw.export_onnx, which exports the hooked model "
                "itself; or create the model with feature_cls='getter', which needs no hooks")

    @property
    def stores_for_forward(self) -> bool:
        return True


class TransformersOutputCapture(Source):
    origin, label = "transformers", ("transformers' output capturing (output_hidden_states, output_attentions): "
                                     "kept, the model's own machinery")

    def matches(self, ref: HookRef) -> bool:
        install = _loaded("transformers.utils.output_capturing", "install_output_capuring_hook")
        return install is not None and getattr(ref.target, "__code__", None) in _inner_codes(install)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.KEEP, ("transformers' output-capturing hook: it collects hidden states and attentions when the "
                           "model is called with output_hidden_states=True or output_attentions=True, and does "
                           "nothing otherwise. It is the model's own machinery (transformers installs it again on "
                           "a loaded model), so it stays")

    @property
    def machinery(self) -> bool:
        return True


class InputRequireGrads(Source):
    origin, label = "peft", ("input-grad hooks of transformers' enable_input_require_grads and PEFT: stripped, "
                             "reported for what they do")

    def matches(self, ref: HookRef) -> bool:
        funcs = [_loaded("transformers.modeling_utils", "PreTrainedModel")]
        funcs = [getattr(funcs[0], "enable_input_require_grads", None)] if funcs[0] is not None else []
        for module, name in (("peft.peft_model", "PeftModel"), ("peft.utils.other", "prepare_model_for_kbit_training"),
                             ("peft.mixed_model", "PeftMixedModel")):
            obj = _loaded(module, name)
            if isinstance(obj, type):
                funcs += [v for v in vars(obj).values() if isinstance(v, types.FunctionType)]
            elif obj is not None:
                funcs.append(obj)
        code = getattr(ref.target, "__code__", None)
        return code is not None and code.co_name.startswith("make_inputs_require_grad") and code in _inner_codes(*funcs)

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.STRIP, ("input-grad hook (enable_input_require_grads): it sets requires_grad on the input "
                            "embeddings' output so that training with gradient checkpointing reaches the adapters, "
                            "and changes no value. Stripped: before training the loaded model, call "
                            "model.enable_input_require_grads() again")


class TransformerLensHookPoints(Source):
    origin, label = "transformer_lens", ("TransformerLens HookPoint hooks (add_hook, add_perma_hook): captured, "
                                         "named by the hook point and the user's function")

    def _hook_point(self) -> Any:
        return _loaded("transformer_lens.hook_points", "HookPoint")

    def matches(self, ref: HookRef) -> bool:
        cls = self._hook_point()
        return cls is not None and ref.kind.is_forward and isinstance(ref.owner, cls)

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.CAPTURE, f"TransformerLens hook on {self.alias(ref) or 'a hook point'}: {CAPTURE_REASON}"

    def name(self, ref: HookRef) -> str:
        target = ref.target
        free = getattr(getattr(target, "__code__", None), "co_freevars", ())
        if "hook" in free and target.__closure__:
            user = target.__closure__[free.index("hook")].cell_contents
            user = unwrap_hook(user)
            return getattr(user, "__qualname__", type(user).__qualname__)
        return super().name(ref)

    def alias(self, ref: HookRef) -> str | None:
        name = getattr(ref.owner, "name", None)
        return name if isinstance(name, str) and name else None

    def aliases(self, model: nn.Module) -> dict[int, str]:
        """Every name of each hook point in the model's ``hook_dict`` (a bridge reaches one
        hook point by several: ``blocks.0.attn.hook_z`` is ``blocks.0.attn.o.hook_in``),
        shortest first."""
        table = getattr(model, "hook_dict", None)
        cls = self._hook_point()
        if cls is None or not isinstance(table, dict):
            return {}
        names: dict[int, list[str]] = {}
        for name, point in table.items():
            if isinstance(point, cls) and isinstance(name, str):
                names.setdefault(id(point), []).append(name)
        return {k: " / ".join(sorted(v, key=lambda n: (len(n), n))) for k, v in names.items()}


class TransformerLensWiring(Source):
    origin, label = "transformer_lens", ("TransformerLens' own wiring hooks (a block's capture of its residual for "
                                         "hook_mlp_in and split-qkv inputs): stripped, the bridge installs them again")

    def matches(self, ref: HookRef) -> bool:
        module = getattr(ref.target, "__module__", None) or ""
        return ref.kind.is_forward and module.startswith("transformer_lens.model_bridge")

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.STRIP, ("TransformerLens' own wiring hook: the bridge installs it when it runs, to hand a "
                            "block's residual to hook_mlp_in and split-qkv inputs. Stripped (its closure points at "
                            "the model it was installed on, not at a copy); the end-to-end check proves the outputs "
                            "do not need it")

    @property
    def reinstalled(self) -> bool:
        return True


class StateDictHooks(Source):
    origin, label = "user", "state-dict hooks: kept (not on the forward path)"

    def matches(self, ref: HookRef) -> bool:
        return not ref.kind.is_forward and not ref.kind.is_gradient and ref.kind is not Kind.PARAMETRIZATION

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.KEEP, "state-dict hook: not on the forward path, left in place by convert"

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)


class Capture(Source):
    origin, label = "user", ("anything else on the forward path: captured from example_inputs (a plain module for "
                             "known patterns, a CapturedHook otherwise, stripped as an observer, or refused)")

    def matches(self, ref: HookRef) -> bool:
        return True

    def plan(self, ref: HookRef) -> tuple[Plan, str]:
        return Plan.CAPTURE, CAPTURE_REASON

    def origin_of(self, ref: HookRef) -> str:
        return _module_origin(ref.target)


# Libraries whose hooks we name by package when we meet them.
_KNOWN_LIBRARIES = frozenset({
    "accelerate", "transformers", "peft", "deepspeed", "timm", "torchvision", "captum", "torchinfo", "fairscale",
    "lightning", "pytorch_lightning", "torchao", "bitsandbytes", "hookwrap", "steering_vectors", "transformer_lens",
    "nnsight", "repeng", "diffusers",
})


def _module_origin(target: Any) -> str:
    """A known library's package name, ``torch`` for other PyTorch internals, else user."""
    module_name = getattr(target, "__module__", None) or type(target).__module__ or ""
    top = module_name.split(".")[0]
    if top in _KNOWN_LIBRARIES or top == "torch":
        return top
    return "user"


#: The rules, in order: the first that matches a hook decides.
SOURCES: tuple[Source, ...] = (
    GlobalHooks(), GradientHooks(), HookwrapHooks(), UserConverters(), Pruning(), WeightNormHook(),
    SpectralNormHook(), Parametrizations(), Quantization(), TorchScriptModules(), TimmFeatureHooks(),
    TransformersOutputCapture(), InputRequireGrads(), TransformerLensHookPoints(), TransformerLensWiring(),
    StateDictHooks(), Capture(),
)


def source_for(ref: HookRef, *, skip_global: bool = False) -> Source:
    """The first source that matches ``ref``. ``skip_global`` asks what a global hook would
    be on its own (``convert(..., global_hooks='convert')`` converts it)."""
    for source in SOURCES:
        if skip_global and isinstance(source, GlobalHooks):
            continue
        if source.matches(ref):
            return source
    raise AssertionError("Capture matches every hook")  # pragma: no cover

