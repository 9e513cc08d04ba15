"""Registries of wrapper types and user converters.

Two lookups live here:

* wrapper types by name: the only types a manifest may name. hookwrap's own wrappers
  are registered when :mod:`hookwrap.wrappers` is imported; users add theirs with
  :func:`register_converter`. A name that is not registered is refused; nothing is ever
  imported because a file names it.
* converters: functions that turn a user's hook object into a wrapper module, tried after
  hookwrap's own hook objects and before PyTorch utilities and capture.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .wrappers import Wrapper

__all__ = ["register_converter", "ConverterHandle", "find_converter", "wrapper_type", "register_wrapper"]

_lock = threading.Lock()
_WRAPPERS: dict[str, type[Wrapper]] = {}
_BUILTIN: set[str] = set()


@dataclass(frozen=True)
class _Converter:
    match: Callable[[Any], bool]
    build: Callable[[Any, nn.Module], nn.Module]
    wrapper: type
    label: str


_CONVERTERS: list[_Converter] = []


def register_wrapper(cls: type[Wrapper], *, builtin: bool = False) -> type[Wrapper]:
    """Make ``cls`` loadable from a manifest under ``cls.kind``.

    Args:
        cls: a subclass of :class:`hookwrap.wrappers.Wrapper` with a unique ``kind``.
        builtin: used by hookwrap for its own wrappers.

    Returns:
        ``cls``, so this works as a class decorator.

    Raises:
        InvalidArgumentError: ``cls`` is not a Wrapper, or its ``kind`` is taken by
            another type.
    """
    from .wrappers import Wrapper

    if not (isinstance(cls, type) and issubclass(cls, Wrapper)):
        raise InvalidArgumentError(
            f"wrapper must be a subclass of hookwrap.wrappers.Wrapper, got {cls!r}"
        )
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise InvalidArgumentError(
            f"wrapper type {cls.__qualname__} needs a class attribute `kind` (a non-empty str)"
        )
    with _lock:
        existing = _WRAPPERS.get(kind)
        if existing is not None and existing is not cls:
            raise InvalidArgumentError(
                f"wrapper kind {kind!r} is already registered by {existing.__qualname__}; "
                f"give {cls.__qualname__} another `kind`"
            )
        _WRAPPERS[kind] = cls
        if builtin:
            _BUILTIN.add(kind)
    return cls


def wrapper_type(kind: str) -> type[Wrapper] | None:
    """The registered wrapper type called ``kind``, or ``None``. Never imports anything."""
    from . import wrappers  # noqa: F401  (registers the built-in wrappers)

    with _lock:
        return _WRAPPERS.get(kind)


class ConverterHandle:
    """Returned by :func:`register_converter`; ``remove()`` unregisters (idempotent)."""

    def __init__(self, converter: _Converter) -> None:
        self._converter = converter

    def remove(self) -> None:
        with _lock:
            if self._converter in _CONVERTERS:
                _CONVERTERS.remove(self._converter)
            kind = self._converter.wrapper.kind  # type: ignore[attr-defined]
            still_used = any(c.wrapper is self._converter.wrapper for c in _CONVERTERS)
            if not still_used and kind not in _BUILTIN and _WRAPPERS.get(kind) is self._converter.wrapper:
                del _WRAPPERS[kind]

    def __enter__(self) -> ConverterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register_converter(
    match: type | Callable[[Any], bool],
    build: Callable[[Any, nn.Module], nn.Module],
    *,
    wrapper: type[Wrapper],
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
    register_wrapper(wrapper)
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
