"""What ``convert`` and ``strip`` did with each hook: :class:`ConversionReport`.

The report travels with the model: ``convert``/``strip`` store it on the returned root
module (attribute ``hookwrap_report``), :func:`conversion_report` reads it back, and
:func:`hookwrap.save` writes it into the manifest (``baked`` and ``stripped``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Generic, Literal, TypeVar, overload

from torch import nn

from ._fs import write_json

__all__ = ["Plan", "Kind", "FORWARD_KINDS", "GRAD_KINDS", "PRE_KINDS", "Action", "Check", "ConversionReport", "conversion_report", "REPORT_ATTR", "ItemList"]

REPORT_ATTR = "hookwrap_report"
ActionName = Literal["converted", "baked", "stripped", "kept"]


class Plan(str, Enum):
    """What ``convert`` does with a hook: the one classification that the inventory, the
    conversion plan and the report share. ``done`` is the past tense the report uses."""

    CONVERT = "convert"          # becomes a wrapper module
    BAKE = "bake"                # a weight transform made permanent
    STRIP = "strip"              # removed: it does not change what the model computes
    KEEP = "keep"                # left in place: not on the forward path, or not the model's
    UNSUPPORTED = "unsupported"  # blocks conversion
    CAPTURE = "capture"          # decided by running example_inputs: a wrapper, stripped, or unsupported

    @property
    def done(self) -> str:
        return {"convert": "converted", "bake": "baked", "strip": "stripped", "keep": "kept",
                "unsupported": "blocked", "capture": "captured"}[self.value]

    def __str__(self) -> str:
        return self.value


class Kind(str, Enum):
    """Where a hook (or weight transform) sits: the hook dictionaries of a module, of
    ``torch.nn.modules.module`` (global hooks), of a tensor, or a module's parametrizations."""

    FORWARD_PRE = "forward_pre"
    FORWARD = "forward"
    BACKWARD_PRE = "backward_pre"
    BACKWARD = "backward"
    STATE_DICT_PRE = "state_dict_pre"
    STATE_DICT = "state_dict"
    LOAD_STATE_DICT_PRE = "load_state_dict_pre"
    LOAD_STATE_DICT_POST = "load_state_dict_post"
    GLOBAL_FORWARD_PRE = "global_forward_pre"
    GLOBAL_FORWARD = "global_forward"
    GLOBAL_BACKWARD_PRE = "global_backward_pre"
    GLOBAL_BACKWARD = "global_backward"
    TENSOR = "tensor"
    PARAMETRIZATION = "parametrization"

    def __str__(self) -> str:
        return self.value

    @property
    def is_forward(self) -> bool:
        """Runs on the forward path (and so can change outputs)."""
        return self in FORWARD_KINDS

    @property
    def is_global(self) -> bool:
        return self.value.startswith("global")

    @property
    def is_gradient(self) -> bool:
        return self in GRAD_KINDS


FORWARD_KINDS = frozenset({Kind.FORWARD_PRE, Kind.FORWARD, Kind.GLOBAL_FORWARD_PRE, Kind.GLOBAL_FORWARD})
GRAD_KINDS = frozenset({Kind.BACKWARD_PRE, Kind.BACKWARD, Kind.GLOBAL_BACKWARD_PRE, Kind.GLOBAL_BACKWARD, Kind.TENSOR})
PRE_KINDS = frozenset({Kind.FORWARD_PRE, Kind.GLOBAL_FORWARD_PRE})




@dataclass(frozen=True)
class Action:
    """What happened to one hook.

    ``action`` is ``converted`` (now the wrapper ``wrapper`` at ``position``),
    ``baked`` (a weight transform made permanent), ``stripped`` (removed; ``detail``
    says why) or ``kept`` (left in place).
    """

    path: str
    kind: str
    name: str
    origin: str
    action: ActionName
    detail: str
    wrapper: str | None = None
    position: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One run of convert's end-to-end check: ``what`` was run (the example inputs, a second
    input, other sizes, a call option, generation) and its ``status``: ``passed`` (the
    converted model computed exactly what the hooked model did) or ``skipped`` (the hooked
    model itself refused it; ``detail`` says how)."""

    what: str
    status: Literal["passed", "skipped"]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


T = TypeVar("T")


class ItemList(Sequence[T], Generic[T]):
    """An immutable sequence of report items; a slice is the same kind of list."""

    def __init__(self, items: Sequence[T]) -> None:
        self._items = list(items)

    def _new(self, items: list[T]) -> ItemList[T]:
        return type(self)(items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> ItemList[T]: ...
    def __getitem__(self, index: int | slice) -> T | ItemList[T]:
        if isinstance(index, slice):
            return self._new(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)


class ConversionReport(ItemList[Action]):
    """A sequence of :class:`Action`, one per hook, in inventory order."""

    def __init__(self, actions: Sequence[Action], *, missing_keys: Sequence[str] = (),
                 checks: Sequence[Check] = ()) -> None:
        super().__init__(actions)
        # what hw.load(..., strict=False) did not find in the file (the base kept those tensors)
        self.missing_keys = tuple(missing_keys)
        # what convert's end-to-end check ran, passed and skipped
        self.checks = tuple(checks)

    @property
    def actions(self) -> list[Action]:
        return self._items

    def __add__(self, other: ConversionReport) -> ConversionReport:
        return ConversionReport(self.actions + list(other), checks=self.checks + other.checks)

    def of(self, action: ActionName) -> list[Action]:
        return [a for a in self.actions if a.action == action]

    def counts(self) -> dict[str, int]:
        return dict(Counter(a.action for a in self.actions))

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "actions": [a.to_dict() for a in self.actions],
                "missing_keys": list(self.missing_keys), "checks": [c.to_dict() for c in self.checks]}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The report as JSON; also written to ``path`` if given."""
        return write_json(self.to_dict(), path, indent)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "nothing to do"
        missing = f"; {len(self.missing_keys)} key(s) missing from the file" if self.missing_keys else ""
        return f"conversion report: {counts}{missing}"

    def rows(self) -> list[list[str]]:
        rows = [["path", "kind", "hook", "action", "detail"]]
        for a in self.actions:
            rows.append([a.path or "<root>", a.kind, a.name, a.action, a.detail])
        return rows

    def __str__(self) -> str:
        lines = [self.summary()]
        for a in self.actions:
            lines.append(f"  {a.path or '<root>'} [{a.kind}] {a.name}: {a.action} {a.detail}")
        if self.checks:
            lines.append("end-to-end check:")
            lines += [f"  {c.status}: {c.what}" + (f" ({c.detail})" if c.detail else "") for c in self.checks]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ConversionReport({self.counts()})"


def conversion_report(model: nn.Module) -> ConversionReport | None:
    """The report that ``convert``/``strip`` stored on ``model``, or ``None``.

    Example:
        >>> converted = hw.convert(model, (x,))
        >>> print(hw.conversion_report(converted))
    """
    report = model.__dict__.get(REPORT_ATTR)
    return report if isinstance(report, ConversionReport) else None


def attach_report(model: nn.Module, actions: list[Action], *, missing_keys: Sequence[str] = (),
                  checks: Sequence[Check] = ()) -> ConversionReport:
    previous = conversion_report(model)
    report = ConversionReport((list(previous) if previous else []) + actions, missing_keys=missing_keys,
                              checks=checks)
    model.__dict__[REPORT_ATTR] = report
    return report
