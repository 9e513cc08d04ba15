"""User converters: functions that turn a user's hook object into a wrapper module, tried
after hookwrap's own hook objects and before PyTorch utilities and capture.

Registering a converter also registers its wrapper type (in :mod:`hookwrap.wrappers`,
whose registry is the only place a manifest's type names are looked up).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import wrappers as W
from .errors import InvalidArgumentError

__all__ = ["register_converter", "ConverterHandle", "find_converter"]

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
