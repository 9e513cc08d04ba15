"""hookwrap's exception family.

Every error hookwrap raises on purpose derives from :class:`HookwrapError`, which is a
:class:`RuntimeError`. Messages name the module path or tensor key at fault, say what was
expected and what was found, and give the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "HookwrapError",
    "InvalidArgumentError",
    "UnconvertibleHookError",
    "Blocker",
    "ManifestError",
    "ExportError",
    "ParityError",
]


class HookwrapError(RuntimeError):
    """Root of every error that hookwrap raises on purpose."""


class InvalidArgumentError(HookwrapError, ValueError):
    """A public function was called with an argument it cannot use.

    It is also a :class:`ValueError`, so ``except ValueError`` keeps working.
    """


@dataclass(frozen=True)
class Blocker:
    """One hook that :func:`hookwrap.convert` could not turn into a module."""

    path: str
    kind: str
    name: str
    reason: str
    fix: str

    def __str__(self) -> str:
        where = self.path if self.path else "<root>"
        return f"{where} [{self.kind}] {self.name}: {self.reason} Fix: {self.fix}"


class UnconvertibleHookError(HookwrapError):
    """Raised by ``convert`` when one or more hooks cannot be converted.

    ``blockers`` lists every hook at fault, so a single run shows all of them.
    The model passed to ``convert`` is left exactly as it was.
    """

    def __init__(self, blockers: list[Blocker], *, note: str = "") -> None:
        self.blockers = list(blockers)
        lines = [f"{len(self.blockers)} hook(s) cannot be converted:"]
        lines += [f"  - {b}" for b in self.blockers]
        if note:
            lines.append(note)
        super().__init__("\n".join(lines))


class ManifestError(HookwrapError):
    """A hookwrap file (or its manifest) is broken, hostile or does not fit the model.

    ``key`` names the tensor key, metadata key or module path at fault.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


class ExportError(HookwrapError):
    """ONNX export, or the checks hookwrap runs on its result, failed."""


class ParityError(HookwrapError):
    """Raised by ``assert_parity``; ``report`` holds the full ``ParityReport`` (anything with
    a ``summary()``: this module imports nothing from hookwrap)."""

    def __init__(self, report: Any) -> None:
        self.report = report
        super().__init__(report.summary())
