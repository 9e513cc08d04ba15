"""Wrapper modules: the explicit, serializable stand-ins for hooks.

A wrapper is an ordinary :class:`torch.nn.Module`. :func:`hookwrap.convert` places
wrappers on the module a hook was registered on (the *host*), in child lists named
``hookwrap_pre`` and ``hookwrap_post``, and swaps the host's class for a subclass that
runs them around the original ``forward`` (the pre wrappers where PyTorch runs forward
pre-hooks, the post wrappers at the end of ``forward``). The swap follows
``torch.nn.utils.parametrize``: ``isinstance`` still holds, ``state_dict`` keys are
unchanged (wrappers that own tensors add keys under ``<host>.hookwrap_pre.<i>.`` or
``<host>.hookwrap_post.<i>.``), ``print(model)`` shows the wrappers, and the model
deep-copies and pickles.

Every wrapper type has a registry name (``kind``) and a JSON ``config()``; a manifest
names wrappers only by ``kind``.
"""

from __future__ import annotations

import inspect
import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _tree
from .errors import HookwrapError, InvalidArgumentError

# The wrappers that hookwrap.hooks offers as hook objects too, under the same names.
HOOKABLE = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "Scale",
            "Shift", "Clamp", "Activation", "GaussianNoise")

__all__ = [
    "Wrapper",
    *HOOKABLE,
    "Chain",
    "FakeQuantize",
    "HOOKABLE",
    "ACTIVATIONS",
    "map_primary",
    "build_wrapper",
    "register_wrapper",
    "unregister_wrapper",
    "wrapper_type",
    "in_wrapper",
    "label_wrappers",
]


def map_primary(value: Any, fn: Callable[[Tensor], Tensor], *, where: str = "output") -> Any:
    """Apply ``fn`` to a tensor, or to the first item of a tuple/list that starts with one.

    This is how hookwrap's hooks and wrappers treat multi-output modules such as
    ``nn.LSTM`` (``(output, (h, c))``) or ``nn.MultiheadAttention``
    (``(attn_output, attn_weights)``): the primary output is transformed, the rest is
    passed through.
    """
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        items = [fn(value[0]), *value[1:]]
        if hasattr(value, "_make"):  # namedtuple
            return type(value)._make(items)
        return type(value)(items)
    raise HookwrapError(
        f"expected the {where} to be a tensor or a tuple whose first item is a tensor, "
        f"got {type(value).__name__}; write a converter (hw.register_converter) for this module"
    )


class Wrapper(nn.Module):
    """Base class of every module that stands in for a hook.

    Subclasses set ``kind`` (their registry name), implement ``_run(x, training)`` for
    tensor-to-tensor wrappers (or override :meth:`hookwrap_pre` / :meth:`hookwrap_post`)
    and ``config()`` returning JSON-serializable constructor arguments.
    """

    kind: ClassVar[str] = ""
    # True when hookwrap_post is the base one ("apply forward to the primary output"): the
    # host then calls the wrapper directly on a tensor output, one Python call fewer per
    # forward. Derived for every subclass, so overriding hookwrap_post is always honoured.
    elementwise: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.elementwise = cls.hookwrap_post is Wrapper.hookwrap_post

    def _run(self, x: Tensor, training: bool) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, self.training)

    def config(self) -> dict[str, Any]:
        """JSON-serializable keyword arguments that rebuild this wrapper."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Wrapper:
        """Rebuild from :meth:`config`. Raises ``InvalidArgumentError`` on bad values."""
        if not isinstance(config, dict):
            raise InvalidArgumentError(f"{cls.kind} config must be an object, got {type(config).__name__}")
        try:
            return cls(**config)
        except TypeError as exc:
            raise InvalidArgumentError(f"{cls.kind} config {config!r} does not fit: {exc}") from None

    @classmethod
    def declared_tensors(cls, config: Any) -> dict[str, tuple[torch.dtype, list[int]]]:
        """The tensors (buffers, parameters) that ``from_config(config)`` allocates, by name,
        with dtype and shape. Wrappers that own tensors must override this: loaders check
        the declared sizes against the file before building anything."""
        return {}

    def spec(self) -> dict[str, Any]:
        """``{"type": kind, "config": {...}}``: how a manifest describes this wrapper."""
        return {"type": self.kind, "config": self.config()}

    # How the host's forward calls a wrapper. Tensor-to-tensor wrappers act on the
    # first positional input (pre) or on the primary output (post).
    def hookwrap_pre(self, host: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if not args or not isinstance(args[0], Tensor):
            raise HookwrapError(
                f"{type(self).__name__} as a pre-hook acts on the first positional input, "
                f"which is not a tensor here"
            )
        return (self.forward(args[0]), *args[1:]), kwargs

    def hookwrap_post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if isinstance(output, Tensor):  # the common case, kept short: it runs on every call
            return self.forward(output)
        return map_primary(output, self.forward)


# --------------------------------------------------------------------------------------
# The registry of wrapper types: the only types a manifest may name. hookwrap's own
# wrappers register below; users add theirs with hw.register_converter. A name that is
# not registered is refused; nothing is ever imported because a file names it.
# --------------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_WRAPPERS: dict[str, type[Wrapper]] = {}
_BUILTIN: set[str] = set()


def register_wrapper(cls: type[Wrapper], *, builtin: bool = False) -> type[Wrapper]:
    """Make ``cls`` loadable from a manifest under ``cls.kind``.

    Args:
        cls: a subclass of :class:`Wrapper` with a unique ``kind``.
        builtin: used by hookwrap for its own wrappers (they are never unregistered).

    Returns:
        ``cls``, so this works as a class decorator.

    Raises:
        InvalidArgumentError: ``cls`` is not a Wrapper, or its ``kind`` is taken by
            another type.
    """
    if not (isinstance(cls, type) and issubclass(cls, Wrapper)):
        raise InvalidArgumentError(f"wrapper must be a subclass of hookwrap.wrappers.Wrapper, got {cls!r}")
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise InvalidArgumentError(f"wrapper type {cls.__qualname__} needs a class attribute `kind` (a non-empty str)")
    with _registry_lock:
        existing = _WRAPPERS.get(kind)
        if existing is not None and existing is not cls:
            raise InvalidArgumentError(
                f"wrapper kind {kind!r} is already registered by {existing.__qualname__}; "
                f"give {cls.__qualname__} another `kind`")
        _WRAPPERS[kind] = cls
        if builtin:
            _BUILTIN.add(kind)
    return cls


def unregister_wrapper(cls: type[Wrapper]) -> None:
    """Forget a user wrapper type (hookwrap's own stay registered)."""
    with _registry_lock:
        kind = getattr(cls, "kind", "")
        if kind not in _BUILTIN and _WRAPPERS.get(kind) is cls:
            del _WRAPPERS[kind]


def wrapper_type(kind: str) -> type[Wrapper] | None:
    """The registered wrapper type called ``kind``, or ``None``. Never imports anything."""
    with _registry_lock:
        return _WRAPPERS.get(kind)


def _builtin(cls: type[Wrapper]) -> type[Wrapper]:
    return register_wrapper(cls, builtin=True)


def _check_p(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise InvalidArgumentError(f"dropout probability p must be a number in [0, 1], got {p!r}")
    return float(p)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def _check_number(name: str, value: Any, *, optional: bool = False) -> Any:
    """A finite int or float, kept as given (``x * 2`` and ``x * 2.0`` differ for int tensors)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    return value


class _DropoutMixin:
    always: bool
    p: float
    inplace: bool

    def config(self) -> dict[str, Any]:
        return {"p": self.p, "always": self.always}

    def extra_repr(self) -> str:
        return f"p={self.p}, always={self.always}"


# --------------------------------------------------------------------------------------
# Random operators that survive ONNX export.
#
# The dynamo exporter turns ``F.dropout(x, p, True)`` into an ONNX ``Dropout`` node with
# ``training_mode=True``, which onnxruntime's inference build runs as the identity: the
# exported model silently loses its randomness. While exporting to ONNX, hookwrap's
# stochastic wrappers therefore draw their masks with ``rand_like`` (ONNX
# ``RandomUniformLike``), which keeps the same distribution. Eager runs keep using the
# functional ops, so they stay bit-identical to the hooks they replace.
# --------------------------------------------------------------------------------------

_ALPHA = 1.7580993408473766  # SELU's alpha * scale, as in ATen's alpha dropout


def _noise_like(x: Tensor, spatial: int | None) -> Tensor:
    """A tensor shaped like the dropout mask: ``x`` itself, or one value per channel."""
    if spatial is None:
        return x
    keep = 2 if x.dim() == spatial + 2 else 1  # batched (N, C, ...) or unbatched (C, ...)
    index = (slice(None),) * keep + (slice(0, 1),) * (x.dim() - keep)
    return x[index]


def onnx_dropout(x: Tensor, p: float, *, spatial: int | None = None, alpha: bool = False) -> Tensor:
    """Dropout written with ``rand_like`` so that it exports to ONNX random operators."""
    if p == 0.0:
        return x
    if p == 1.0 and not alpha:
        return x * 0.0
    keep = (torch.rand_like(_noise_like(x, spatial)) >= p).to(x.dtype)
    if not alpha:
        return x * keep / (1.0 - p)
    a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1.0) * (1.0 - p))
    return x * (keep * a) + ((keep - 1.0) * (_ALPHA * a) + _ALPHA * a * p)


def _dropout_type(name: str, base: type[nn.Module], fn: Callable[..., Tensor], doc: str,
                  spatial: int | None = None, alpha: bool = False) -> type[Wrapper]:
    def __init__(self: Any, p: float = 0.5, always: bool = False) -> None:
        base.__init__(self, _check_p(p))
        self.always = _check_bool("always", always)

    def _run(self: Any, x: Tensor, training: bool) -> Tensor:
        on = training or self.always
        if on and torch.onnx.is_in_onnx_export():
            return onnx_dropout(x, self.p, spatial=spatial, alpha=alpha)
        return fn(x, self.p, on, False)

    cls = type(name, (_DropoutMixin, Wrapper, base), {
        "__init__": __init__, "_run": _run, "kind": name, "__doc__": doc, "__module__": __name__,
    })
    return register_wrapper(cls, builtin=True)


_DOC = (
    "{base} that can stay on in eval mode.\n\n"
    "With ``always=True`` it drops even after ``model.eval()`` (MC dropout), like a hook\n"
    "calling ``F.{fn}(out, p, True, False)``. It is still an ``nn.{base}``.\n"
)
Dropout = _dropout_type("Dropout", nn.Dropout, F.dropout, _DOC.format(base="Dropout", fn="dropout"))
Dropout1d = _dropout_type("Dropout1d", nn.Dropout1d, F.dropout1d, _DOC.format(base="Dropout1d", fn="dropout1d"), 1)
Dropout2d = _dropout_type("Dropout2d", nn.Dropout2d, F.dropout2d, _DOC.format(base="Dropout2d", fn="dropout2d"), 2)
Dropout3d = _dropout_type("Dropout3d", nn.Dropout3d, F.dropout3d, _DOC.format(base="Dropout3d", fn="dropout3d"), 3)
AlphaDropout = _dropout_type(
    "AlphaDropout", nn.AlphaDropout, F.alpha_dropout, _DOC.format(base="AlphaDropout", fn="alpha_dropout"),
    alpha=True,
)
FeatureAlphaDropout = _dropout_type(
    "FeatureAlphaDropout", nn.FeatureAlphaDropout, F.feature_alpha_dropout,
    _DOC.format(base="FeatureAlphaDropout", fn="feature_alpha_dropout"), 2, alpha=True,
)


@_builtin
class Scale(Wrapper):
    """Multiply by a constant, or divide by one: ``x * factor`` or ``x / divisor``.

    Division is kept as division so results stay bit-identical to a hook that divides.
    """

    kind = "Scale"

    def __init__(self, factor: float | None = None, *, divisor: float | None = None) -> None:
        super().__init__()
        if (factor is None) == (divisor is None):
            raise InvalidArgumentError("Scale takes exactly one of factor= or divisor=")
        self.factor = _check_number("factor", factor, optional=True)
        self.divisor = _check_number("divisor", divisor, optional=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.divisor is not None:
            return x / self.divisor
        return x * self.factor

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return self.forward(x)

    def config(self) -> dict[str, Any]:
        return {"factor": self.factor} if self.divisor is None else {"divisor": self.divisor}

    def extra_repr(self) -> str:
        return f"factor={self.factor}" if self.divisor is None else f"divisor={self.divisor}"


@_builtin
class Shift(Wrapper):
    """Add a constant: ``x + offset``."""

    kind = "Shift"

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = _check_number("offset", offset)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return self.forward(x)

    def config(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


@_builtin
class Clamp(Wrapper):
    """``torch.clamp(x, min, max)``; either bound may be ``None``, not both."""

    kind = "Clamp"

    def __init__(self, min: float | None = None, max: float | None = None) -> None:  # noqa: A002
        super().__init__()
        self.min = _check_number("min", min, optional=True)
        self.max = _check_number("max", max, optional=True)
        if self.min is None and self.max is None:
            raise InvalidArgumentError("Clamp needs min=, max= or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InvalidArgumentError(f"Clamp min ({self.min}) is greater than max ({self.max})")

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.min, self.max)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return self.forward(x)

    def config(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}

    def extra_repr(self) -> str:
        return f"min={self.min}, max={self.max}"


# Parameter-free activations from torch.nn that a manifest may name, with the
# constructor arguments that describe them.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "ReLU": (), "ReLU6": (), "SELU": (), "SiLU": (), "Mish": (), "Sigmoid": (), "Tanh": (),
    "Hardswish": (), "Hardsigmoid": (), "Softsign": (), "Tanhshrink": (), "LogSigmoid": (),
    "GELU": ("approximate",), "LeakyReLU": ("negative_slope",), "ELU": ("alpha",),
    "CELU": ("alpha",), "Hardtanh": ("min_val", "max_val"), "Softplus": ("beta", "threshold"),
    "Softmax": ("dim",), "LogSoftmax": ("dim",), "Hardshrink": ("lambd",),
    "Softshrink": ("lambd",), "Threshold": ("threshold", "value"),
}


def _activation_config(module: nn.Module) -> tuple[str, dict[str, Any]]:
    name = type(module).__name__
    if name not in ACTIVATIONS or type(module) is not getattr(nn, name, None):
        raise InvalidArgumentError(
            f"Activation takes one of torch.nn's parameter-free activations "
            f"({', '.join(sorted(ACTIVATIONS))}), got {type(module).__qualname__}; "
            f"for anything else write a converter with hw.register_converter"
        )
    return name, {attr: getattr(module, attr) for attr in ACTIVATIONS[name]}


@_builtin
class Activation(Wrapper):
    """Apply a torch.nn activation module, for example ``Activation(nn.GELU())``."""

    kind = "Activation"
    _act: nn.Module

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        name, kwargs = _activation_config(module)
        self.module = getattr(nn, name)(**kwargs)
        # A direct reference too: ``self.module`` resolves through nn.Module.__getattr__,
        # which is slow enough to show on small layers.
        object.__setattr__(self, "_act", self.module)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return self._act.forward(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._act.forward(x)

    def config(self) -> dict[str, Any]:
        name, kwargs = _activation_config(self.module)
        return {"name": name, "kwargs": kwargs}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Wrapper:
        if not isinstance(config, dict) or set(config) != {"name", "kwargs"}:
            raise InvalidArgumentError(f"Activation config must be {{name, kwargs}}, got {config!r}")
        name, kwargs = config["name"], config["kwargs"]
        if name not in ACTIVATIONS or not isinstance(kwargs, dict) or set(kwargs) - set(ACTIVATIONS[name]):
            raise InvalidArgumentError(f"Activation config names an unknown activation or argument: {config!r}")
        for key, value in kwargs.items():
            if key == "approximate":
                ok = value in ("none", "tanh")
            elif key == "dim":
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                raise InvalidArgumentError(f"Activation {name} cannot be built: bad argument {key}={value!r}")
        try:
            return cls(getattr(nn, name)(**kwargs))
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"Activation {name}({kwargs}) cannot be built: {exc}") from None


@_builtin
class GaussianNoise(Wrapper):
    """Add ``N(0, std^2)`` noise: ``x + torch.randn_like(x) * std``, in training or ``always``."""

    kind = "GaussianNoise"

    def __init__(self, std: float, always: bool = False) -> None:
        super().__init__()
        std_f = _check_number("std", std)
        assert std_f is not None
        if std_f < 0:
            raise InvalidArgumentError(f"GaussianNoise std must be >= 0, got {std!r}")
        self.std = std_f
        self.always = _check_bool("always", always)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        if not (training or self.always):
            return x
        return x + torch.randn_like(x) * self.std

    def config(self) -> dict[str, Any]:
        return {"std": self.std, "always": self.always}

    def extra_repr(self) -> str:
        return f"std={self.std}, always={self.always}"


@_builtin
class FakeQuantize(Wrapper):
    """Fake quantization with frozen parameters, what a quantization-aware training
    observer (``torch.ao.quantization.FakeQuantize`` and its fused variant) computes once
    its observer is disabled: ``fake_quantize_per_tensor_affine``, or per channel along
    ``axis``. ``scale`` and ``zero_point`` are buffers (``<host>.hookwrap_post.<i>.scale``);
    it exports to ONNX QuantizeLinear/DequantizeLinear.
    """

    kind = "FakeQuantize"

    def __init__(self, quant_min: int, quant_max: int, *, channels: int = 1, axis: int | None = None) -> None:
        super().__init__()
        for name, value in (("quant_min", quant_min), ("quant_max", quant_max), ("channels", channels)):
            if type(value) is not int or abs(value) > 2**31:
                raise InvalidArgumentError(f"FakeQuantize {name} must be an integer, got {value!r}")
        if not quant_min < quant_max or channels < 1 or (axis is not None and (type(axis) is not int or
                                                                                not -8 <= axis < 8)):
            raise InvalidArgumentError("FakeQuantize needs quant_min < quant_max, channels >= 1 and a small axis")
        if axis is None and channels != 1:
            raise InvalidArgumentError("FakeQuantize per tensor has one channel")
        self.quant_min, self.quant_max, self.channels, self.axis = quant_min, quant_max, channels, axis
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))

    @classmethod
    def declared_tensors(cls, config: Any) -> dict[str, tuple[torch.dtype, list[int]]]:
        channels = config.get("channels", 1) if isinstance(config, dict) else 1
        if type(channels) is not int or not 1 <= channels <= 2**20:
            raise InvalidArgumentError("FakeQuantize channels must be an integer from 1 to 2**20")
        return {"scale": (torch.float32, [channels]), "zero_point": (torch.int32, [channels])}

    def _run(self, x: Tensor, training: bool) -> Tensor:
        scale, zero_point = self.get_buffer("scale"), self.get_buffer("zero_point")
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, self.axis, self.quant_min, self.quant_max)

    def config(self) -> dict[str, Any]:
        return {"quant_min": self.quant_min, "quant_max": self.quant_max, "channels": self.channels,
                "axis": self.axis}

    def extra_repr(self) -> str:
        where = "per tensor" if self.axis is None else f"per channel, axis={self.axis}"
        return f"quant_min={self.quant_min}, quant_max={self.quant_max}, {where}"


@_builtin
class Chain(Wrapper):
    """Several tensor-to-tensor wrappers applied in order (one hook that did several things)."""

    kind = "Chain"

    def __init__(self, items: Sequence[Wrapper]) -> None:
        super().__init__()
        items = list(items)
        if not items or not all(isinstance(i, Wrapper) and type(i)._run is not Wrapper._run for i in items):
            raise InvalidArgumentError("Chain takes a non-empty list of tensor-to-tensor wrappers")
        if len(items) > MAX_CHAIN_ITEMS:
            raise InvalidArgumentError(f"a Chain holds at most {MAX_CHAIN_ITEMS} items")
        self.depth: int = 1 + max((i.depth for i in items if isinstance(i, Chain)), default=0)
        if self.depth > MAX_CHAIN_DEPTH:
            raise InvalidArgumentError(f"Chains are nested deeper than {MAX_CHAIN_DEPTH} levels")
        self.items = nn.ModuleList(items)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        for item in self.items:
            x = item._run(x, training)  # type: ignore[operator]
        return x

    def forward(self, x: Tensor) -> Tensor:
        for item in self.items._modules.values():
            x = item.forward(x)
        return x

    def config(self) -> dict[str, Any]:
        return {"items": [item.spec() for item in self.items]}  # type: ignore[operator]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Wrapper:
        if not isinstance(config, dict) or set(config) != {"items"} or not isinstance(config["items"], list):
            raise InvalidArgumentError(f"Chain config must be {{items: [...]}}, got {config!r}")
        return cls([build_wrapper(spec) for spec in config["items"]])


MAX_CHAIN_DEPTH = 8
MAX_CHAIN_ITEMS = 256


def _spec_parts(spec: Any) -> tuple[type[Wrapper], Any]:
    if not isinstance(spec, dict) or set(spec) - {"type", "config"} or "type" not in spec:
        raise InvalidArgumentError(f"a wrapper spec must be {{type, config}}, got {str(spec)[:120]}")
    kind = spec["type"]
    cls = wrapper_type(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidArgumentError(
            f"unknown wrapper type {str(kind)[:80]!r}: only hookwrap's wrappers and types registered "
            f"with hw.register_converter(...) in this process can be loaded"
        )
    return cls, spec.get("config", {})


def count_wrappers(spec: Any, depth: int = 0) -> int:
    """How many wrappers ``spec`` builds (a Chain counts itself and its items).

    Raises:
        InvalidArgumentError: the spec is malformed, names an unregistered type, or nests
            Chains deeper than :data:`MAX_CHAIN_DEPTH`.
    """
    cls, config = _spec_parts(spec)
    if cls is not Chain:
        return 1
    if depth >= MAX_CHAIN_DEPTH:
        raise InvalidArgumentError(f"Chains are nested deeper than {MAX_CHAIN_DEPTH} levels")
    items = config.get("items") if isinstance(config, dict) else None
    if not isinstance(items, list) or len(items) > MAX_CHAIN_ITEMS:
        raise InvalidArgumentError(f"a Chain holds a list of at most {MAX_CHAIN_ITEMS} items")
    return 1 + sum(count_wrappers(item, depth + 1) for item in items)


def declared_tensors(spec: Any) -> dict[str, tuple[torch.dtype, list[int]]]:
    """The tensors a wrapper built from ``spec`` owns, by name relative to the wrapper,
    with dtype and shape, read from the spec alone: a loader checks them against the file
    before anything is allocated."""
    cls, config = _spec_parts(spec)
    return cls.declared_tensors(config)


def build_wrapper(spec: Any) -> Wrapper:
    """Build a wrapper from ``{"type": kind, "config": {...}}`` using the registry only.

    Raises:
        InvalidArgumentError: the spec is malformed, names an unregistered kind, or its
            config is refused by the wrapper type.
    """
    count_wrappers(spec)
    cls, config = _spec_parts(spec)
    return cls.from_config(config)


# --------------------------------------------------------------------------------------
# Captured hooks: a hook body captured with torch.export, stored as an aten graph.
# --------------------------------------------------------------------------------------

_TENSOR_DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_SCALAR_LEAF = (type(None), bool, int, float, str)


MAX_CONSTANT_ELEMENTS = 2**31


def _constant_specs(constants: Any) -> dict[str, tuple[torch.dtype, list[int]]]:
    """``{"c0": (dtype, shape), ...}`` from a CapturedHook's ``constants`` config, checked."""
    constants = constants or {}
    if not isinstance(constants, dict) or set(constants) != {f"c{i}" for i in range(len(constants))}:
        raise InvalidArgumentError("CapturedHook constants must be an object with keys c0, c1, ...")
    out: dict[str, tuple[torch.dtype, list[int]]] = {}
    for i in range(len(constants)):
        meta = constants[f"c{i}"]
        if not isinstance(meta, dict) or set(meta) != {"dtype", "shape"} or meta["dtype"] not in _TENSOR_DTYPES \
                or not isinstance(meta["shape"], list) or len(meta["shape"]) > 16 or not all(
                    isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in meta["shape"]):
            raise InvalidArgumentError(f"CapturedHook constant c{i} needs a dtype and a shape")
        if math.prod(meta["shape"]) > MAX_CONSTANT_ELEMENTS:
            raise InvalidArgumentError(f"CapturedHook constant c{i} is implausibly large")
        out[f"c{i}"] = (_TENSOR_DTYPES[meta["dtype"]], list(meta["shape"]))
    return out


TENSOR, OPAQUE = {"tensor": True}, {"opaque": True}


def _check_template(template: Any, what: str, *, opaque_inputs: int | None = None) -> list:
    """A template lists a structure's leaves: ``{"tensor": true}`` (a graph input or output),
    a JSON scalar (fixed at capture), and in inputs ``{"opaque": true}`` (a live object the
    hook passes along without reading it, such as a KV cache) or in outputs
    ``{"opaque": k}`` (the k-th opaque input, returned as it is)."""

    def ok(v: Any) -> bool:
        if isinstance(v, _SCALAR_LEAF) or v == TENSOR:
            return True
        if opaque_inputs is None:
            return v == OPAQUE
        return isinstance(v, dict) and set(v) == {"opaque"} and type(v["opaque"]) is int \
            and 0 <= v["opaque"] < opaque_inputs

    if not isinstance(template, list) or not all(ok(v) for v in template):
        raise InvalidArgumentError(f"CapturedHook {what} must list scalars, tensors and opaque values")
    return template


MAX_DIMS = 64
MAX_SYMBOLS = 1024
_SYMBOL = re.compile(r"^d[0-9]{1,6}$")


def _small_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value < 2**40


def _check_symbols(symbols: Any) -> dict[str, dict[str, Any]]:
    """The symbolic sizes of a captured graph: ``{"d0": {"min": 1, "max": null, "captured": 8}}``."""
    if symbols is None:
        return {}
    if not isinstance(symbols, dict) or len(symbols) > MAX_SYMBOLS:
        raise InvalidArgumentError(f"CapturedHook symbols must be an object of at most {MAX_SYMBOLS} entries")
    for key, rng in symbols.items():
        if not isinstance(key, str) or not _SYMBOL.match(key) or not isinstance(rng, dict) \
                or set(rng) != {"min", "max", "captured"} or not _small_int(rng["min"]) \
                or not _small_int(rng["captured"]) or not (rng["max"] is None or _small_int(rng["max"], rng["min"])):
            raise InvalidArgumentError(f"CapturedHook symbol {str(key)[:40]!r} needs integer min, max (or null) "
                                       f"and captured sizes")
    return {k: dict(v) for k, v in symbols.items()}


def _check_dims(dims: Any, count: int, symbols: dict[str, Any]) -> list[list[int | str | None]] | None:
    """One list per graph tensor input: a fixed size (int), a symbol, or null (not checked)."""
    if dims is None:
        return None
    ok = isinstance(dims, list) and len(dims) == count and all(
        isinstance(d, list) and len(d) <= MAX_DIMS and all(
            v is None or _small_int(v) or (isinstance(v, str) and v in symbols) for v in d) for d in dims)
    if not ok:
        raise InvalidArgumentError(f"CapturedHook input_dims must list, for each of its {count} tensor inputs, "
                                   f"sizes, declared symbols or null")
    return [list(d) for d in dims]


@_builtin
class CapturedHook(Wrapper):
    """A hook whose body was captured with ``torch.export`` as an aten graph.

    The graph takes the hook's tensor inputs (the flattened ``(args, output)``,
    ``(args, kwargs, output)``, ``(args,)`` or ``(args, kwargs)`` of the hooked call),
    then any tensors of the host module the hook read (``host_tensors``, by name), then
    its own constants, which are buffers of this module (``c0``, ``c1``, ...: they appear
    in ``state_dict`` under ``<host>.hookwrap_post.<i>.c<j>``). Non-tensor inputs are
    fixed at the values seen during capture.

    Sizes: ``input_dims`` gives, for each tensor input, every dimension as a fixed size
    (the graph is specialised to it), a symbol of ``symbols`` (the graph works at any size
    in the symbol's checked range; dimensions with one symbol must agree), or ``null``.
    A call outside that is refused with a :class:`~hookwrap.HookwrapError` naming the
    wrapper's path, the input, the dimension and the size at capture. Files written before
    format 3 carry no ``input_dims``; their graphs keep only the batch dimension symbolic.

    ``open_kwargs``: the hook (registered ``with_kwargs=True``) was seen to pass keyword
    arguments it was not captured with along unread, so a call with more keyword
    arguments than at capture (a call option a library forwards) runs the graph on the
    captured ones and passes the others on.

    It pickles, deep-copies and saves as JSON plus tensors; no Python function of the
    original hook is kept.
    """

    kind = "CapturedHook"
    _gm: Any  # the decoded fx.GraphModule: a plain attribute, not a child module

    def __init__(
        self,
        *,
        graph: dict[str, Any],
        position: str,
        with_kwargs: bool,
        in_spec: Any,
        in_template: list,
        out_spec: Any,
        out_template: list,
        host_tensors: Sequence[str] = (),
        constants: dict[str, dict[str, Any]] | None = None,
        name: str = "",
        input_dims: list[list[int | str | None]] | None = None,
        symbols: dict[str, dict[str, Any]] | None = None,
        input_dtypes: list[str] | None = None,
        open_kwargs: bool = False,
    ) -> None:
        super().__init__()
        from ._graph import GraphFormatError, decode

        if position not in ("pre", "post"):
            raise InvalidArgumentError(f"CapturedHook position must be 'pre' or 'post', got {position!r}")
        self.position = position
        self.with_kwargs = _check_bool("with_kwargs", with_kwargs)
        self.name = str(name)
        self.in_template = _check_template(in_template, "in_template")
        self._opaque_in_idx = [i for i, v in enumerate(self.in_template) if v == OPAQUE]
        self.out_template = _check_template(out_template, "out_template", opaque_inputs=len(self._opaque_in_idx))
        if not isinstance(host_tensors, (list, tuple)) or not all(
            isinstance(h, str) and h and all(p.isidentifier() for p in h.split(".")) for h in host_tensors
        ):
            raise InvalidArgumentError("CapturedHook host_tensors must be a list of attribute paths")
        self.host_tensors = list(host_tensors)
        try:
            self._in_spec = _tree.parse(in_spec)
            self._out_spec = _tree.parse(out_spec)
        except _tree.TreeError as exc:
            raise InvalidArgumentError(f"CapturedHook tree spec refused: {exc}") from None
        if self._in_spec.num_leaves != len(self.in_template) or self._out_spec.num_leaves != len(self.out_template):
            raise InvalidArgumentError("CapturedHook tree specs do not match their templates")
        declared = _constant_specs(constants)
        for const_name, (dtype, shape) in declared.items():
            self.register_buffer(const_name, torch.zeros(shape, dtype=dtype))
        self._n_consts = len(declared)
        try:
            # a plain attribute, not a child module: it holds no state of its own
            object.__setattr__(self, "_gm", decode(graph))
        except GraphFormatError as exc:
            raise InvalidArgumentError(f"CapturedHook graph refused: {exc}") from None
        self._tensor_in_idx = [i for i, v in enumerate(self.in_template) if v == TENSOR]
        self._scalar_in = [(i, v) for i, v in enumerate(self.in_template) if not isinstance(v, dict)]
        expected = len(self._tensor_in_idx) + len(self.host_tensors) + self._n_consts
        if graph["inputs"] != expected:
            raise InvalidArgumentError(
                f"CapturedHook graph takes {graph['inputs']} inputs but its templates give {expected}"
            )
        if len(graph["outputs"]) != sum(1 for v in self.out_template if v == TENSOR):
            raise InvalidArgumentError("CapturedHook graph outputs do not match out_template")
        self._graph_json = graph
        self.symbols = _check_symbols(symbols)
        self.input_dims = _check_dims(input_dims, len(self._tensor_in_idx), self.symbols)
        if (input_dtypes is None) != (self.input_dims is None) or input_dtypes is not None and (
                not isinstance(input_dtypes, list) or len(input_dtypes) != len(self._tensor_in_idx)
                or not all(isinstance(d, str) and d in _TENSOR_DTYPES for d in input_dtypes)):
            raise InvalidArgumentError("CapturedHook input_dtypes must give the dtype of each tensor input, "
                                       "with input_dims")
        self.input_dtypes = None if input_dtypes is None else list(input_dtypes)
        self._checked: set[tuple] = set()  # signatures the static check passed
        self._budget: int | None = None
        names: tuple[str, ...] = ("args", "kwargs", "output") if self.with_kwargs else ("args", "output")
        if position == "pre":
            names = names[:-1]
        leaf_names = _tree.leaf_paths(self._in_spec, names)
        self._input_labels = [leaf_names[i] for i in self._tensor_in_idx]
        self.open_kwargs = _check_bool("open_kwargs", open_kwargs)
        top = self._in_spec
        self._kwargs_keys: tuple | None = top.children[1].keys if self.with_kwargs and top.kind == "tuple" \
            and len(top.children) >= 2 and top.children[1].kind == "dict" else None

    @classmethod
    def declared_tensors(cls, config: Any) -> dict[str, tuple[torch.dtype, list[int]]]:
        return _constant_specs(config.get("constants") if isinstance(config, dict) else None)

    def config(self) -> dict[str, Any]:
        return {
            "graph": self._graph_json, "position": self.position, "with_kwargs": self.with_kwargs,
            "in_spec": self._in_spec.to_json(), "in_template": self.in_template,
            "out_spec": self._out_spec.to_json(), "out_template": self.out_template,
            "host_tensors": self.host_tensors,
            "constants": {
                f"c{i}": {"dtype": str(b.dtype).removeprefix("torch."), "shape": list(b.shape)}
                for i, b in enumerate(self._constants())
            },
            "name": self.name,
            **({} if self.input_dims is None else {"input_dims": self.input_dims, "symbols": self.symbols,
                                                   "input_dtypes": self.input_dtypes}),
            **({"open_kwargs": True} if self.open_kwargs else {}),
        }

    @property
    def where(self) -> str:
        """``"<module path>: "`` of this wrapper in its model (set by ``convert`` and ``load``),
        or ``""`` for a wrapper outside a model; error messages start with it."""
        path = self.__dict__.get("_hookwrap_path")
        return f"{path}: " if path else ""

    def _constants(self) -> list[Tensor]:
        return [getattr(self, f"c{i}") for i in range(self._n_consts)]

    def extra_repr(self) -> str:
        ops = len(self._graph_json["nodes"])
        return f"{self.name or 'hook'}, {self.position}, {ops} op(s)"

    def forward(self, *tensors: Tensor) -> Any:  # type: ignore[override]
        gm = self._gm
        if torch.onnx.is_in_onnx_export():
            gm = self.__dict__.get("_gm_onnx") or self._onnx_graph()
        return gm(*tensors, *self._constants())

    def _onnx_graph(self) -> Any:
        """The graph with its random dropout ops rewritten to ``rand_like`` masks, so they
        survive ONNX export (see :func:`onnx_dropout`)."""
        import copy as _copy

        from torch import fx

        gm = _copy.deepcopy(self._gm)
        for node in gm.graph.nodes:
            rewrite = _ONNX_DROPOUTS.get(node.target) if node.op == "call_function" else None
            if rewrite is not None:
                node.target = rewrite
        gm.recompile()
        assert isinstance(gm, fx.GraphModule)
        object.__setattr__(self, "_gm_onnx", gm)
        return gm

    def _call(self, host: nn.Module, tree: Any, like: Any) -> Any:
        try:
            leaves, spec = _tree.flatten(tree)
        except _tree.TreeError as exc:
            spec, leaves = None, []
            problem = str(exc)
        if spec != self._in_spec:
            raise HookwrapError(
                f"{self.where}the captured {self.position}-hook {self.name or 'hook'!r} was captured for inputs "
                f"shaped like {self._in_spec} but is called with {spec if spec is not None else problem}; convert "
                f"again with example inputs like this call")
        for i, value in self._scalar_in:
            if leaves[i] != value or type(leaves[i]) is not type(value):
                raise HookwrapError(
                    f"{self.where}the captured {self.position}-hook {self.name or 'hook'!r} was captured with the "
                    f"value {value!r} at input {i} but is called with {leaves[i]!r}; its graph holds the captured "
                    f"value, so convert again with example inputs like this call")
        inputs = [leaves[i] for i in self._tensor_in_idx]
        opaque = [leaves[i] for i in self._opaque_in_idx]
        host_inputs = [_host_tensor(host, name) for name in self.host_tensors]
        if _tracing(inputs):  # an exporter traces the model: checks would add guards or touch fake data
            outs = iter(self.forward(*inputs, *host_inputs))
        else:
            self._check_shapes(inputs)
            self._check_at_call(inputs, host_inputs)
            try:
                outs = iter(self._detached(self.forward(*inputs, *host_inputs), inputs, host_inputs))
            except HookwrapError:
                raise
            except Exception as exc:
                raise HookwrapError(self._failure(inputs, exc)) from exc
        result = [next(outs) if v == TENSOR else opaque[v["opaque"]] if isinstance(v, dict) else v
                  for v in self.out_template]
        return _tree.unflatten(result, self._out_spec, like=like)

    def check_graph(self, host: nn.Module, *, budget: int) -> None:
        """The static check of :mod:`hookwrap._graph_check` for the input signature recorded
        at capture, with ``host``'s tensors: at load, before the graph ever runs. A graph
        without a recorded signature (format 2) is checked at its first call instead, on
        the sizes of that call.

        Raises:
            InvalidArgumentError: the graph is refused; the message names the node.
        """
        self._budget = budget
        if self.input_dtypes is None or self.input_dims is None:
            return
        hints = {name: rng["captured"] for name, rng in self.symbols.items()}
        specs = [(_TENSOR_DTYPES[dtype], dims, [hints[d] if isinstance(d, str) else d if isinstance(d, int) else 1
                                                for d in dims])
                 for dtype, dims in zip(self.input_dtypes, self.input_dims)]
        try:
            fixed = [_host_tensor(host, name) for name in self.host_tensors] + self._constants()
        except (HookwrapError, AttributeError) as exc:
            raise InvalidArgumentError(f"CapturedHook reads a tensor its module does not have: {exc}") from None
        self._static_check(specs, fixed)

    def _static_check(self, specs: Sequence[tuple[torch.dtype, Sequence[Any], Sequence[int]]],
                      fixed: list[Tensor]) -> None:
        from ._graph import GraphFormatError
        from ._graph_check import DEFAULT_BUDGET, InputSpec, check_graph

        key = (tuple((dtype, tuple(dims)) for dtype, dims, _ in specs),
               tuple((t.dtype, tuple(t.shape)) for t in fixed))
        if key in self._checked:
            return
        inputs = [InputSpec(dtype, tuple(dims), tuple(int(h) for h in hints)) for dtype, dims, hints in specs]
        inputs += [InputSpec(t.dtype, tuple(int(n) for n in t.shape), tuple(int(n) for n in t.shape)) for t in fixed]
        try:
            check_graph(self._gm, inputs, self._budget or DEFAULT_BUDGET)
        except GraphFormatError as exc:
            raise InvalidArgumentError(f"CapturedHook graph refused: {exc}") from None
        if len(self._checked) > 64:
            self._checked.clear()
        self._checked.add(key)

    def _check_at_call(self, inputs: list[Tensor], host_inputs: list[Tensor]) -> None:
        """Before the graph runs on real tensors: the static check for this call's dtypes, if
        they are not those the graph was checked for at load (a model moved to another
        dtype, or a format-2 graph, checked on this call's sizes)."""
        fixed = host_inputs + self._constants()
        if self.input_dims is not None and self.input_dtypes is not None:
            specs = [(t.dtype, dims, list(t.shape)) for t, dims in zip(inputs, self.input_dims)]
        else:
            specs = [(t.dtype, list(t.shape), list(t.shape)) for t in inputs]
        try:
            self._static_check(specs, fixed)
        except InvalidArgumentError as exc:
            raise HookwrapError(self._failure(inputs, exc)) from None

    def _check_shapes(self, inputs: list[Tensor]) -> None:
        """Refuse, with the dimension named, a call whose sizes the graph was not captured for:
        a size it fixed, a size outside the range it was checked for, or two sizes it ties
        together that differ."""
        if self.input_dims is None:
            return
        bound: dict[str, tuple[int, int, int]] = {}  # symbol -> (size, input, dim) where it was first seen
        for i, (value, dims) in enumerate(zip(inputs, self.input_dims)):
            if value.dim() != len(dims):
                raise self._shape_error(i, f"has {value.dim()} dimension(s), but the hook was captured with "
                                           f"{len(dims)} there")
            for d, (size, want) in enumerate(zip(value.shape, dims)):
                if want is None:
                    continue
                if isinstance(want, int):
                    if size != want:
                        raise self._shape_error(i, f"has size {size} in dim {d}, but the captured graph is "
                                                   f"specialised to the size it had at capture, {want}")
                    continue
                rng = self.symbols[want]
                if want in bound and bound[want][0] != size:
                    first, j, e = bound[want]
                    raise self._shape_error(i, f"has size {size} in dim {d}, but its {self._input_labels[j]} has "
                                               f"{first} in dim {e}; the captured graph ties these sizes together "
                                               f"(both were {rng['captured']} at capture)")
                if size < rng["min"] or (rng["max"] is not None and size > rng["max"]):
                    top = "any" if rng["max"] is None else rng["max"]
                    raise self._shape_error(i, f"has size {size} in dim {d}, outside the sizes the captured graph "
                                               f"was checked for ({rng['min']} to {top}; {rng['captured']} at "
                                               f"capture)")
                bound.setdefault(want, (size, i, d))

    def _detached(self, outputs: Sequence[Tensor], inputs: list[Tensor], host_inputs: list[Tensor]) -> list[Tensor]:
        """The graph's outputs, each a tensor of its own: one that shares memory with a host
        tensor or a constant, or is a view of an input (not the input itself, which a hook may
        pass along), is cloned, so nothing downstream (an in-place ReLU) writes through it."""
        guarded = {t.untyped_storage().data_ptr() for t in [*host_inputs, *self._constants()] if t.numel()}
        viewed = {t.untyped_storage().data_ptr(): t for t in inputs if t.numel()}
        out = []
        for t in outputs:
            if isinstance(t, Tensor) and t.numel():
                ptr = t.untyped_storage().data_ptr()
                if ptr in guarded or (ptr in viewed and not any(t is i for i in inputs)):
                    t = t.clone()
            out.append(t)
        return out

    def _shape_error(self, index: int, detail: str) -> HookwrapError:
        return HookwrapError(
            f"{self.where}the {self.position}-hook {self.name or 'hook'!r} was captured as a graph, and the "
            f"{self._input_labels[index]} it is given {detail}. Convert again with example inputs of this size, or "
            f"make the hook independent of this size")

    def _failure(self, inputs: list[Tensor], exc: BaseException) -> str:
        shapes = ", ".join(f"{label} {list(t.shape)}" for label, t in zip(self._input_labels, inputs))
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        older = "" if self.input_dims is not None else (
            " It was captured by a hookwrap older than format 3, which kept only the batch dimension symbolic: "
            "convert and save it again.")
        return (f"{self.where}the captured {self.position}-hook {self.name or 'hook'!r} failed on inputs of shapes "
                f"{shapes} ({type(exc).__name__}: {first}).{older}")

    def _split_kwargs(self, kwargs: dict) -> tuple[dict, dict]:
        """``(the keyword arguments the hook was captured with, the others)`` when the hook
        passes other keyword arguments along unread (``open_kwargs``); else ``(kwargs, {})``."""
        known = self._kwargs_keys
        if not self.open_kwargs or known is None or not all(k in kwargs for k in known):
            return kwargs, {}
        return {k: kwargs[k] for k in known}, {k: v for k, v in kwargs.items() if k not in known}

    def hookwrap_pre(self, host: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.with_kwargs:
            captured, extra = self._split_kwargs(kwargs)
            new_args, new_kwargs = self._call(host, (args, captured), (args, captured))
            return tuple(new_args), {**new_kwargs, **extra}
        return tuple(self._call(host, (args,), args)), kwargs

    def hookwrap_post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        tree = (args, self._split_kwargs(kwargs)[0], output) if self.with_kwargs else (args, output)
        return self._call(host, tree, output)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in ("_gm", "_gm_onnx")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ._graph import decode

        super().__setstate__(state)
        object.__setattr__(self, "_gm", decode(self._graph_json))


def _tracing(tensors: list[Tensor]) -> bool:
    """True while torch.export, dynamo, the ONNX exporters or jit trace the model: the
    tensors are fake or functional, or their sizes symbolic."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    from torch._guards import detect_fake_mode

    if detect_fake_mode(tensors) is not None:
        return True
    return any(not isinstance(t, Tensor) or torch._is_functional_tensor(t) or not all(type(n) is int for n in t.shape)
               for t in tensors)


def _aten_dropout(spatial: int | None, alpha: bool) -> Callable[..., Tensor]:
    def run(x: Tensor, p: float, train: bool) -> Tensor:
        return onnx_dropout(x, p, spatial=spatial, alpha=alpha) if train else x

    return run


def _feature_spatial(x: Tensor, p: float, train: bool, alpha: bool) -> Tensor:
    return onnx_dropout(x, p, spatial=max(x.dim() - 2, 1), alpha=alpha) if train else x


_ONNX_DROPOUTS: dict[Any, Callable[..., Tensor]] = {
    torch.ops.aten.dropout.default: _aten_dropout(None, False),
    torch.ops.aten.alpha_dropout.default: _aten_dropout(None, True),
    torch.ops.aten.feature_dropout.default: lambda x, p, train: _feature_spatial(x, p, train, False),
    torch.ops.aten.feature_alpha_dropout.default: lambda x, p, train: _feature_spatial(x, p, train, True),
}


def _host_tensor(host: nn.Module, name: str) -> Tensor:
    owner_path, _, attr = name.rpartition(".")
    owner = host.get_submodule(owner_path) if owner_path else host
    value = getattr(owner, attr)
    if not isinstance(value, Tensor):
        raise HookwrapError(f"captured hook reads {name!r} of {type(host).__name__}, which is not a tensor")
    return value


# --------------------------------------------------------------------------------------
# Hosts: the hooked module, its class swapped for one that runs the wrappers.
# --------------------------------------------------------------------------------------

PRE, POST = "hookwrap_pre", "hookwrap_post"
_HOST_KEYS = frozenset({PRE, POST})
_HOST_CLASSES: dict[type, type] = {}


def _visible(module: nn.Module) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in module._modules.items() if k not in _HOST_KEYS]


# Containers iterate their children in forward; they must not see the wrapper lists.
def _seq_iter(self: Any) -> Any:
    return iter(v for _, v in _visible(self))


def _seq_len(self: Any) -> int:
    return len(_visible(self))


def _seq_getitem(self: Any, idx: Any) -> Any:
    if isinstance(idx, slice):
        base = self._hookwrap_base
        items = _visible(self)[idx]
        if issubclass(base, nn.Sequential):
            from collections import OrderedDict

            return base(OrderedDict(items))
        return base([v for _, v in items])
    return self._hookwrap_base.__getitem__(self, idx)


def _dict_keys(self: Any) -> Any:
    return [k for k, _ in _visible(self)]


def _dict_items(self: Any) -> Any:
    return _visible(self)


def _dict_values(self: Any) -> Any:
    return [v for _, v in _visible(self)]


def _dict_iter(self: Any) -> Any:
    return iter(_dict_keys(self))


def _rebuild_host(base: type) -> nn.Module:
    cls = host_class(base)
    return object.__new__(cls)


def host_class(base: type[nn.Module]) -> type[nn.Module]:
    """The class a hooked module of type ``base`` becomes: a subclass of ``base`` whose call
    runs the ``hookwrap_pre`` wrappers first (where PyTorch runs forward pre-hooks, before
    the hooks still registered see the arguments) and whose ``forward`` runs
    ``base.forward``, then the ``hookwrap_post`` wrappers. It keeps ``forward``'s signature
    and pickles by reference to ``base``."""
    if "_hookwrap_base" in base.__dict__:
        return base
    cached = _HOST_CLASSES.get(base)
    if cached is not None:
        return cached
    base_forward = base.forward
    base_call_impl = base._call_impl

    def _call_impl(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # Pre wrappers run where PyTorch runs forward pre-hooks: before the call, so that
        # the forward hooks still on the module (transformers' output capturing, hooks added
        # after conversion) see the arguments as changed, as they did on the hooked model.
        pre: Any = self._modules.get(PRE)
        if pre is not None:
            for wrapper in pre._modules.values():
                args, kwargs = wrapper.hookwrap_pre(self, args, kwargs)
        return base_call_impl(self, *args, **kwargs)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # The hot path of every converted model: the wrapper list is read straight from
        # _modules (no ModuleList.__iter__), and a wrapper's own forward is called directly,
        # as a hook would have been, without nn.Module.__call__'s machinery around it.
        out = base_forward(self, *args, **kwargs)
        post: Any = self._modules.get(POST)
        if post is not None:
            for wrapper in post._modules.values():
                if wrapper.elementwise and isinstance(out, Tensor):
                    out = wrapper.forward(out)
                else:
                    out = wrapper.hookwrap_post(self, args, kwargs, out)
        return out

    try:
        forward.__signature__ = inspect.signature(base_forward)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        pass
    forward.__doc__ = base_forward.__doc__

    def __reduce_ex__(self: nn.Module, protocol: Any) -> Any:
        return (_rebuild_host, (base,), self.__getstate__())

    namespace: dict[str, Any] = {
        "forward": forward,
        "_call_impl": _call_impl,
        "__reduce_ex__": __reduce_ex__,
        "_hookwrap_base": base,
        "__module__": __name__,
        "__doc__": f"{base.__qualname__} with hookwrap wrappers (see hookwrap.wrappers).",
    }
    if issubclass(base, (nn.Sequential, nn.ModuleList)):
        namespace.update(__iter__=_seq_iter, __len__=_seq_len, __getitem__=_seq_getitem)
    if issubclass(base, nn.ModuleDict):
        namespace.update(__iter__=_dict_iter, __len__=_seq_len, keys=_dict_keys, items=_dict_items,
                         values=_dict_values)
    cls = type(f"Hookwrapped{base.__name__}", (base,), namespace)
    cls.__qualname__ = cls.__name__
    _HOST_CLASSES[base] = cls
    return cls


def in_wrapper(path: str) -> bool:
    """True for a module path or state_dict key inside a host's wrapper lists."""
    parts = path.split(".")
    return PRE in parts or POST in parts


def host_path(path: str) -> str:
    """The path of the host module for a path inside its wrapper lists (``a.b.hookwrap_pre.0``
    -> ``a.b``); any other path as it is."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part in (PRE, POST):
            return ".".join(parts[:i])
    return path


def host_base(module: nn.Module) -> type:
    """The class a module had before it became a host (its own class if it is not one)."""
    return type(module).__dict__.get("_hookwrap_base", type(module))


def is_host(module: nn.Module) -> bool:
    """True if ``module`` carries hookwrap wrappers."""
    return "_hookwrap_base" in type(module).__dict__


def host_wrappers(module: nn.Module) -> tuple[list[Wrapper], list[Wrapper]]:
    """``(pre, post)`` wrappers of a host module, in the order they run."""
    pre = module._modules.get(PRE)
    post = module._modules.get(POST)
    return list(pre) if pre is not None else [], list(post) if post is not None else []  # type: ignore[call-overload]


def label_wrappers(module: nn.Module, path: str) -> None:
    """Tell every :class:`CapturedHook` in ``module`` (found at ``path`` of its model) its own
    module path, which its error messages name."""
    for sub, child in module.named_modules():
        if isinstance(child, CapturedHook):
            child.__dict__["_hookwrap_path"] = f"{path}.{sub}" if path and sub else (path or sub)


def install(module: nn.Module, pre: Sequence[Wrapper] = (), post: Sequence[Wrapper] = (), *,
            path: str | None = None) -> None:
    """Make ``module`` run ``pre`` before and ``post`` after its forward.

    New pre wrappers run before any it already has (they stand for hooks registered
    later, which PyTorch runs outside the earlier ones); new post wrappers run after.
    """
    if not pre and not post:
        return
    base = host_base(module)
    old_pre, old_post = host_wrappers(module)
    module.__class__ = host_class(base)
    if pre:
        module._modules.pop(PRE, None)
        module.add_module(PRE, nn.ModuleList([*pre, *old_pre]))
    if post:
        module._modules.pop(POST, None)
        module.add_module(POST, nn.ModuleList([*old_post, *post]))
    if path is not None:
        label_wrappers(module, path)
