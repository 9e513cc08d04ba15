"""What ``convert`` and ``strip`` did with each hook: :class:`ConversionReport`.

The report travels with the model: ``convert``/``strip`` store it on the returned root
module (attribute ``hookwrap_report``), :func:`conversion_report` reads it back, and
:func:`hookwrap.save` writes it into the manifest (``baked`` and ``stripped``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, overload

from torch import nn

__all__ = ["Action", "ConversionReport", "conversion_report", "REPORT_ATTR"]

REPORT_ATTR = "hookwrap_report"
ActionName = Literal["converted", "baked", "stripped", "kept"]


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


class ConversionReport(Sequence[Action]):
    """A sequence of :class:`Action`, one per hook, in inventory order."""

    def __init__(self, actions: list[Action]) -> None:
        self.actions = list(actions)

    @overload
    def __getitem__(self, index: int) -> Action: ...
    @overload
    def __getitem__(self, index: slice) -> ConversionReport: ...
    def __getitem__(self, index: int | slice) -> Action | ConversionReport:
        if isinstance(index, slice):
            return ConversionReport(self.actions[index])
        return self.actions[index]

    def __len__(self) -> int:
        return len(self.actions)

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __add__(self, other: ConversionReport) -> ConversionReport:
        return ConversionReport(self.actions + list(other))

    def of(self, action: ActionName) -> list[Action]:
        return [a for a in self.actions if a.action == action]

    def counts(self) -> dict[str, int]:
        return dict(Counter(a.action for a in self.actions))

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "actions": [a.to_dict() for a in self.actions]}

    def to_json(self, *, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def rows(self) -> list[list[str]]:
        rows = [["path", "kind", "hook", "action", "detail"]]
        for a in self.actions:
            rows.append([a.path or "<root>", a.kind, a.name, a.action, a.detail])
        return rows

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "nothing to do"
        lines = [f"conversion report: {counts}"]
        for a in self.actions:
            lines.append(f"  {a.path or '<root>'} [{a.kind}] {a.name}: {a.action} {a.detail}")
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


def attach_report(model: nn.Module, actions: list[Action]) -> ConversionReport:
    previous = conversion_report(model)
    report = ConversionReport((list(previous) if previous else []) + actions)
    model.__dict__[REPORT_ATTR] = report
    return report
