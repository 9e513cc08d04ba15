"""hookwrap's own hook objects, and :func:`attach` to register one on many modules.

A hook object registers like any hook (``module.register_forward_hook(hook)`` or
``register_forward_pre_hook``) and knows the wrapper module it is equivalent to
(:meth:`Hook.to_module`), so :func:`hookwrap.convert` turns it into that module without
running anything. Each hook delegates to its wrapper's implementation, so hook and
wrapper compute exactly the same thing.

Register hook objects without ``with_kwargs=True``. As a forward hook a hook object
transforms the module's output (the first item of a tuple output, see
:func:`hookwrap.wrappers.map_primary`); as a pre-hook it transforms the first positional
input. Dropout and noise hooks follow the *hooked module's* ``training`` flag unless
``always=True``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import wrappers as W
from .errors import HookwrapError, InvalidArgumentError

__all__ = [
    "Hook",
    *W.HOOKABLE,
    "attach",
    "HookHandle",
    "Where",
    "select_modules",
]

Where = type | tuple | Callable[[str, nn.Module], bool] | Sequence[str]


class Hook:
    """Base class of hookwrap's hook objects.

    Subclasses set ``wrapper`` to the :class:`hookwrap.wrappers.Wrapper` type they stand
    for; the constructor arguments are that wrapper's (and are validated by it).
    """

    wrapper: type[W.Wrapper] = W.Wrapper

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._impl = self.wrapper(*args, **kwargs)

    def __call__(self, module: nn.Module, args: tuple, *rest: Any) -> Any:
        training = module.training
        if not rest:  # registered as a forward pre-hook: (module, args)
            if not args or not isinstance(args[0], Tensor):
                raise HookwrapError(
                    f"{self!r} as a pre-hook acts on the first positional input of "
                    f"{type(module).__name__}, which is not a tensor"
                )
            return (self._impl._run(args[0], training), *args[1:])
        output = rest[-1]  # (output) or, with with_kwargs=True, (kwargs, output)
        return W.map_primary(output, lambda t: self._impl._run(t, training))

    def to_module(self) -> W.Wrapper:
        """A new wrapper module that computes what this hook computes."""
        return type(self._impl).from_config(self._impl.config())

    def config(self) -> dict[str, Any]:
        return self._impl.config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._impl.extra_repr()})"


def _hook_type(name: str, wrapper: type[W.Wrapper], doc: str) -> type[Hook]:
    return type(name, (Hook,), {"wrapper": wrapper, "__doc__": doc, "__module__": __name__})


Dropout = _hook_type("Dropout", W.Dropout, "``Dropout(p, always=False)``: ``F.dropout`` on the output.")
Dropout1d = _hook_type("Dropout1d", W.Dropout1d, "``Dropout1d(p, always=False)``: channel dropout, 1-d.")
Dropout2d = _hook_type(
    "Dropout2d", W.Dropout2d,
    "``Dropout2d(p, always=False)``: channel dropout. ``always=True`` is the seed article's "
    "``F.dropout2d(out, p, True, False)``: it drops even in eval mode (MC dropout).",
)
Dropout3d = _hook_type("Dropout3d", W.Dropout3d, "``Dropout3d(p, always=False)``: channel dropout, 3-d.")
AlphaDropout = _hook_type("AlphaDropout", W.AlphaDropout, "``AlphaDropout(p, always=False)``.")
FeatureAlphaDropout = _hook_type(
    "FeatureAlphaDropout", W.FeatureAlphaDropout, "``FeatureAlphaDropout(p, always=False)``."
)
Scale = _hook_type("Scale", W.Scale, "``Scale(factor)`` or ``Scale(divisor=d)``: multiply or divide.")
Shift = _hook_type("Shift", W.Shift, "``Shift(offset)``: add a constant.")
Clamp = _hook_type("Clamp", W.Clamp, "``Clamp(min=None, max=None)``: ``torch.clamp``.")
Activation = _hook_type(
    "Activation", W.Activation, "``Activation(module)``: apply a parameter-free torch.nn activation."
)
GaussianNoise = _hook_type(
    "GaussianNoise", W.GaussianNoise, "``GaussianNoise(std, always=False)``: add Gaussian noise."
)


def select_modules(model: nn.Module, where: Where, *, what: str = "where") -> list[tuple[str, nn.Module]]:
    """The ``(path, module)`` pairs of ``model`` that ``where`` selects.

    ``where`` is a module type, a tuple of types, a predicate ``(path, module) -> bool``
    or a list of paths (``""`` is the root). hookwrap's own wrapper modules are never
    selected.

    Raises:
        InvalidArgumentError: ``where`` is of another kind, names a path that does not
            exist, or selects nothing.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"expected an nn.Module, got {type(model).__name__}")
    named: list[tuple[str, nn.Module]] = [
        (p, m) for p, m in model.named_modules(remove_duplicate=False) if not W.in_wrapper(p)
    ]
    if isinstance(where, type) or (isinstance(where, tuple) and where and all(isinstance(t, type) for t in where)):
        chosen = [(p, m) for p, m in named if isinstance(m, where)]
        if not chosen:
            present = sorted({type(m).__name__ for _, m in named})
            names = where.__name__ if isinstance(where, type) else ", ".join(t.__name__ for t in where)
            raise InvalidArgumentError(
                f"{what}={names} matched no module of {type(model).__name__}; "
                f"module types present: {', '.join(present)}"
            )
        return _dedupe(chosen)
    if isinstance(where, (list, tuple)) and all(isinstance(p, str) for p in where):
        by_path = dict(named)
        missing = [p for p in where if p not in by_path]
        if missing:
            raise InvalidArgumentError(
                f"{what} names path(s) that {type(model).__name__} does not have: {missing}; "
                f"see [p for p, _ in model.named_modules()] for valid paths"
            )
        if not where:
            raise InvalidArgumentError(f"{what}=[] selects no module")
        return _dedupe([(p, by_path[p]) for p in where])
    if callable(where):
        chosen = [(p, m) for p, m in named if where(p, m)]
        if not chosen:
            raise InvalidArgumentError(f"the {what} predicate selected no module of {type(model).__name__}")
        return _dedupe(chosen)
    raise InvalidArgumentError(
        f"{what} must be a module type, a tuple of types, a predicate (path, module) -> bool "
        f"or a list of paths; got {where!r}"
    )


def _dedupe(pairs: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    seen: set[int] = set()
    out = []
    for path, mod in pairs:
        if id(mod) not in seen:
            seen.add(id(mod))
            out.append((path, mod))
    return out


class HookHandle:
    """The hooks that one :func:`attach` call registered.

    ``remove()`` unregisters all of them and may be called any number of times; the
    handle is also a context manager. It holds only a weak reference to the model.
    """

    def __init__(self, model: nn.Module, handles: list[tuple[str, RemovableHandle]]) -> None:
        self._model = weakref.ref(model)
        self._handles = handles
        self.paths: tuple[str, ...] = tuple(p for p, _ in handles)

    def remove(self) -> None:
        for _, handle in self._handles:
            handle.remove()

    @property
    def model(self) -> nn.Module | None:
        """The model the hooks were attached to, or ``None`` if it no longer exists."""
        return self._model()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"HookHandle({len(self)} hooks: {', '.join(p or '<root>' for p in self.paths[:4])}{', ...' if len(self) > 4 else ''})"


def attach(
    model: nn.Module,
    hook: Callable[..., Any],
    where: Where,
    *,
    position: Literal["pre", "post"] = "post",
    prepend: bool = False,
) -> HookHandle:
    """Register ``hook`` on every module of ``model`` that ``where`` selects.

    This is the seed article's ``model.apply(register_hook)``, with one handle to undo it.

    Args:
        model: the model.
        hook: any forward hook (``position="post"``) or forward pre-hook (``"pre"``);
            typically a :class:`Hook` such as ``Dropout2d(0.2, always=True)``.
        where: a module type, a tuple of types, a predicate ``(path, module) -> bool`` or
            a list of module paths.
        position: ``"post"`` registers a forward hook, ``"pre"`` a forward pre-hook.
        prepend: register before the module's existing hooks.

    Returns:
        A :class:`HookHandle` whose ``remove()`` unregisters every hook it added.

    Raises:
        InvalidArgumentError: ``model`` is not a module, ``hook`` is not callable,
            ``position`` is unknown, or ``where`` selects nothing.

    Example:
        >>> handle = hw.attach(vgg, hw.hooks.Dropout2d(0.2, always=True), where=nn.Conv2d)
        >>> len(handle)
        13
        >>> handle.remove()
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"attach needs an nn.Module, got {type(model).__name__}")
    if not callable(hook):
        raise InvalidArgumentError(f"hook must be callable, got {hook!r}")
    if position not in ("pre", "post"):
        raise InvalidArgumentError(f"position must be 'pre' or 'post', got {position!r}")
    targets = select_modules(model, where)
    handles: list[tuple[str, RemovableHandle]] = []
    for path, mod in targets:
        if position == "post":
            handles.append((path, mod.register_forward_hook(hook, prepend=prepend)))
        else:
            handles.append((path, mod.register_forward_pre_hook(hook, prepend=prepend)))
    return HookHandle(model, handles)
