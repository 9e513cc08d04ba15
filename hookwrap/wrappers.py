"""Wrapper modules: the explicit, serializable stand-ins for hooks.

A wrapper is an ordinary :class:`torch.nn.Module`. :func:`hookwrap.convert` places
wrappers on the module a hook was registered on (the *host*), in child lists named
``hookwrap_pre`` and ``hookwrap_post``, and swaps the host's class for a subclass whose
``forward`` runs them around the original ``forward``. The swap follows
``torch.nn.utils.parametrize``: ``isinstance`` still holds, ``state_dict`` keys are
unchanged (wrappers that own tensors add keys under ``<host>.hookwrap_pre.<i>.`` or
``<host>.hookwrap_post.<i>.``), ``print(model)`` shows the wrappers, and the model
deep-copies and pickles.

Every wrapper type has a registry name (``kind``) and a JSON ``config()``; a manifest
names wrappers only by ``kind``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import HookwrapError, InvalidArgumentError
from .registry import register_wrapper, wrapper_type

__all__ = [
    "Wrapper",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "Scale",
    "Shift",
    "Clamp",
    "Activation",
    "GaussianNoise",
    "Chain",
    "ACTIVATIONS",
    "map_primary",
    "build_wrapper",
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
        return (self(args[0]), *args[1:]), kwargs

    def hookwrap_post(self, host: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return map_primary(output, self)


def _check_p(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise InvalidArgumentError(f"dropout probability p must be a number in [0, 1], got {p!r}")
    return float(p)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def _check_number(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    return float(value)


class _DropoutMixin:
    always: bool
    p: float
    inplace: bool

    def config(self) -> dict[str, Any]:
        return {"p": self.p, "always": self.always}

    def extra_repr(self) -> str:
        return f"p={self.p}, always={self.always}"


def _dropout_type(name: str, base: type[nn.Module], fn: Callable[..., Tensor], doc: str) -> type[Wrapper]:
    def __init__(self: Any, p: float = 0.5, always: bool = False) -> None:
        base.__init__(self, _check_p(p))
        self.always = _check_bool("always", always)

    def _run(self: Any, x: Tensor, training: bool) -> Tensor:
        return fn(x, self.p, training or self.always, False)

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
Dropout1d = _dropout_type("Dropout1d", nn.Dropout1d, F.dropout1d, _DOC.format(base="Dropout1d", fn="dropout1d"))
Dropout2d = _dropout_type("Dropout2d", nn.Dropout2d, F.dropout2d, _DOC.format(base="Dropout2d", fn="dropout2d"))
Dropout3d = _dropout_type("Dropout3d", nn.Dropout3d, F.dropout3d, _DOC.format(base="Dropout3d", fn="dropout3d"))
AlphaDropout = _dropout_type(
    "AlphaDropout", nn.AlphaDropout, F.alpha_dropout, _DOC.format(base="AlphaDropout", fn="alpha_dropout")
)
FeatureAlphaDropout = _dropout_type(
    "FeatureAlphaDropout", nn.FeatureAlphaDropout, F.feature_alpha_dropout,
    _DOC.format(base="FeatureAlphaDropout", fn="feature_alpha_dropout"),
)


@register_wrapper
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

    def _run(self, x: Tensor, training: bool) -> Tensor:
        if self.divisor is not None:
            return x / self.divisor
        return x * self.factor

    def config(self) -> dict[str, Any]:
        return {"factor": self.factor} if self.divisor is None else {"divisor": self.divisor}

    def extra_repr(self) -> str:
        return f"factor={self.factor}" if self.divisor is None else f"divisor={self.divisor}"


@register_wrapper
class Shift(Wrapper):
    """Add a constant: ``x + offset``."""

    kind = "Shift"

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = _check_number("offset", offset)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return x + self.offset

    def config(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


@register_wrapper
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

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return torch.clamp(x, self.min, self.max)

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


@register_wrapper
class Activation(Wrapper):
    """Apply a torch.nn activation module, for example ``Activation(nn.GELU())``."""

    kind = "Activation"

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        name, kwargs = _activation_config(module)
        self.module = getattr(nn, name)(**kwargs)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        return self.module.forward(x)

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
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                raise InvalidArgumentError(f"Activation argument {key}={value!r} is not a number or string")
        try:
            return cls(getattr(nn, name)(**kwargs))
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"Activation {name}({kwargs}) cannot be built: {exc}") from None


@register_wrapper
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


@register_wrapper
class Chain(Wrapper):
    """Several tensor-to-tensor wrappers applied in order (one hook that did several things)."""

    kind = "Chain"

    def __init__(self, items: Sequence[Wrapper]) -> None:
        super().__init__()
        items = list(items)
        if not items or not all(isinstance(i, Wrapper) and type(i)._run is not Wrapper._run for i in items):
            raise InvalidArgumentError("Chain takes a non-empty list of tensor-to-tensor wrappers")
        self.items = nn.ModuleList(items)

    def _run(self, x: Tensor, training: bool) -> Tensor:
        for item in self.items:
            x = item._run(x, training)  # type: ignore[operator]
        return x

    def forward(self, x: Tensor) -> Tensor:
        for item in self.items:
            x = item(x)
        return x

    def config(self) -> dict[str, Any]:
        return {"items": [item.spec() for item in self.items]}  # type: ignore[operator]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Wrapper:
        if not isinstance(config, dict) or set(config) != {"items"} or not isinstance(config["items"], list):
            raise InvalidArgumentError(f"Chain config must be {{items: [...]}}, got {config!r}")
        return cls([build_wrapper(spec) for spec in config["items"]])


def build_wrapper(spec: Any) -> Wrapper:
    """Build a wrapper from ``{"type": kind, "config": {...}}`` using the registry only.

    Raises:
        InvalidArgumentError: the spec is malformed, names an unregistered kind, or its
            config is refused by the wrapper type.
    """
    if not isinstance(spec, dict) or set(spec) - {"type", "config"} or "type" not in spec:
        raise InvalidArgumentError(f"a wrapper spec must be {{type, config}}, got {spec!r}")
    kind = spec["type"]
    cls = wrapper_type(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidArgumentError(
            f"unknown wrapper type {kind!r}: only hookwrap's wrappers and types registered "
            f"with hw.register_converter(...) in this process can be loaded"
        )
    return cls.from_config(spec.get("config", {}))

