"""Comparing two model outputs, fail-closed: one function for every place that must prove
two results equal (convert's end-to-end check, capture's validation of a hook, the checks
of a loaded model).

:func:`first_difference` walks both outputs together: tensors and numpy arrays (bit for
bit, NaNs in the same places), lists, tuples, dicts and other mappings (``ModelOutput``),
dataclasses, and the attributes of other objects (a KV cache), through ``__dict__`` or
``__slots__``. It returns ``None`` only when everything was compared and found equal.
Where it cannot compare (nested deeper than :data:`MAX_COMPARE_DEPTH`, an object whose
state it cannot read, a module, a function), it returns a :class:`Difference` with
``comparable=False`` that names the place: it never guesses "equal".
"""

from __future__ import annotations

import cmath
import dataclasses
import enum
import functools
import math
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Difference", "first_difference", "MAX_COMPARE_DEPTH"]

MAX_COMPARE_DEPTH = 12
# Values compared with ==: they hold no tensors, and == is their identity of value.
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, enum.Enum,
          range, slice, type(Ellipsis))


@dataclass(frozen=True)
class Difference:
    """Where two outputs differ (``where``, a path such as ``output.past_key_values[0]``)
    and how. ``comparable`` is False when hookwrap could not compare them there, so it
    cannot say that they are equal."""

    where: str
    what: str
    comparable: bool = True

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def first_difference(a: Any, b: Any, where: str = "output") -> Difference | None:
    """The first place where ``a`` and ``b`` differ, or where they cannot be compared;
    ``None`` if and only if they were compared throughout and are equal.

    Args:
        a, b: two results (of the hooked and the converted model, say).
        where: the name of the whole result in messages.

    Returns:
        ``None``, or a :class:`Difference` naming the path.

    Example:
        >>> first_difference((torch.ones(2), {"k": 1}), (torch.ones(2), {"k": 2}))
        Difference(where="output[1]['k']", what='1 against 2', comparable=True)
    """
    return _walk(a, b, where, 0, set())


def _walk(a: Any, b: Any, where: str, depth: int, active: set[tuple[int, int]]) -> Difference | None:
    if a is b:  # the same object is equal to itself
        return None
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if type(a) is not type(b):
            return Difference(where, f"a {type(a).__name__} against a {type(b).__name__}")
        return _arrays(a, b, where)
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return Difference(where, f"a {type(a).__name__} against a {type(b).__name__}")
        return _tensors(a, b, where)
    if type(a) is not type(b):
        return Difference(where, f"a {type(a).__name__} against a {type(b).__name__}")
    if isinstance(a, _PLAIN):
        if isinstance(a, float) and math.isnan(a) and math.isnan(b):
            return None
        if isinstance(a, complex) and (cmath.isnan(a) or cmath.isnan(b)):
            same = str(a) == str(b)
            return None if same else Difference(where, f"{a!r} against {b!r}")
        return None if a == b else Difference(where, f"{a!r} against {b!r}")
    if depth >= MAX_COMPARE_DEPTH:
        return Difference(where, f"a {type(a).__name__} nested deeper than {MAX_COMPARE_DEPTH} levels, where hookwrap "
                                 f"stops comparing", comparable=False)
    key = (id(a), id(b))
    if key in active:  # a cycle: what it holds is compared where the cycle started
        return None
    active.add(key)
    try:
        return _walk_container(a, b, where, depth, active)
    finally:
        active.discard(key)


def _walk_container(a: Any, b: Any, where: str, depth: int, active: set[tuple[int, int]]) -> Difference | None:
    if isinstance(a, nn.Module):
        return None if a is b else Difference(where, f"a module ({type(a).__name__}), which hookwrap does not compare",
                                              comparable=False)
    if isinstance(a, dict) or (hasattr(a, "keys") and hasattr(a, "__getitem__")):
        try:
            keys_a, keys_b = list(a.keys()), list(b.keys())
        except Exception as exc:
            return Difference(where, f"a {type(a).__name__} whose keys cannot be read ({type(exc).__name__})",
                              comparable=False)
        if keys_a != keys_b:
            return Difference(where, f"keys {keys_a} against {keys_b}")
        return _first(((a[k], b[k], f"{where}[{k!r}]") for k in keys_a), depth, active)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return Difference(where, f"{len(a)} items against {len(b)}")
        return _first(((x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))), depth, active)
    if isinstance(a, (set, frozenset)):
        if all(isinstance(v, _PLAIN) for v in (*a, *b)):
            return None if a == b else Difference(where, f"{sorted(map(repr, a))} against {sorted(map(repr, b))}")
        return Difference(where, f"a {type(a).__name__} of objects, which hookwrap does not compare", comparable=False)
    if dataclasses.is_dataclass(a):
        names = [f.name for f in dataclasses.fields(a)]
        return _first(((getattr(a, n, None), getattr(b, n, None), f"{where}.{n}") for n in names), depth, active)
    state_a, state_b = _state(a), _state(b)
    if state_a is None or state_b is None:
        if a is b:
            return None
        return Difference(where, f"a {type(a).__name__}, whose state hookwrap cannot read (no __dict__ or __slots__), "
                                 f"so it cannot compare it", comparable=False)
    if list(state_a) != list(state_b):
        return Difference(where, f"attributes {sorted(state_a)} against {sorted(state_b)}")
    return _first(((state_a[k], state_b[k], f"{where}.{k}") for k in state_a), depth, active)


_MISSING = object()
# Compared by identity only: two different functions or classes cannot be proved equal.
_OPAQUE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.GeneratorType,
           functools.partial)


def _state(value: Any) -> dict[str, Any] | None:
    """An object's attributes, from ``__dict__`` and ``__slots__``; None for objects whose
    state is not there (functions, classes, generators, C types)."""
    if isinstance(value, _OPAQUE):
        return None
    slots = [s for cls in type(value).__mro__ for s in _slots_of(cls) if s not in ("__dict__", "__weakref__")]
    own = getattr(value, "__dict__", None)
    if not isinstance(own, dict) and not slots:
        return None
    state = dict(own) if isinstance(own, dict) else {}
    for name in slots:
        got = getattr(value, name, _MISSING)
        if got is not _MISSING:
            state[name] = got
    return state


def _slots_of(cls: type) -> tuple[str, ...]:
    slots = cls.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(slots)


def _first(pairs: Any, depth: int, active: set[tuple[int, int]]) -> Difference | None:
    for x, y, where in pairs:
        found = _walk(x, y, where, depth + 1, active)
        if found is not None:
            return found
    return None


def _arrays(a: np.ndarray, b: np.ndarray, where: str) -> Difference | None:
    """numpy arrays: shape, dtype, then values (NaNs equal where both are)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return Difference(where, f"{a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}")
    if a.dtype.kind not in "biufcSU":
        return Difference(where, f"a numpy array of {a.dtype}, which hookwrap does not compare", comparable=False)
    if np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
        return None
    return Difference(where, "values differ")


def _tensors(a: Tensor, b: Tensor, where: str) -> Difference | None:
    """Tensors: shape, dtype, then values bit for bit (NaNs equal where both are)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return Difference(where, f"{a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}")
    if a.device.type == "meta" or b.device.type == "meta":
        return Difference(where, "a tensor on the meta device, which holds no values to compare", comparable=False)
    try:
        if a.layout != torch.strided or b.layout != torch.strided:
            a, b = a.to_dense(), b.to_dense()
        if torch.equal(a, b):  # equal and without NaNs: the common case, and the cheapest test
            return None
        if not (a.is_floating_point() or a.is_complex()):
            return Difference(where, "values differ")
        if not torch.equal(a.isnan(), b.isnan()):
            return Difference(where, f"NaNs in different places ({int((a.isnan() != b.isnan()).sum())} values)")
        if torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0)):
            return None
        if a.is_complex() or not a.numel():
            return Difference(where, "values differ")
        diff = (a.double() - b.double()).abs().nan_to_num(0).max().item()
        return Difference(where, f"values differ (max |diff| {diff:.3g})")
    except Exception as exc:  # quantized, nested or other tensors that torch cannot compare so
        return Difference(where, f"a {a.dtype} tensor that hookwrap could not compare ({type(exc).__name__}: "
                                 f"{str(exc)[:120]})", comparable=False)
