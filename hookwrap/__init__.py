"""hookwrap: make PyTorch models that carry hooks safe to save, export and check.

``import hookwrap as hw`` is cheap: torch, onnx and onnxruntime are imported on first
use of a name that needs them, so the command line answers ``--version`` instantly.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> submodule that defines it
_EXPORTS = {
    "inventory": "plan",
    "Inventory": "inventory",
    "HookInfo": "inventory",
    "attach": "hooks",
    "HookHandle": "hooks",
    "convert": "convert",
    "strip": "strip",
    "export_onnx": "export",
    "ExportResult": "export",
    "check_parity": "parity",
    "assert_parity": "parity",
    "ParityReport": "parity",
    "bisect": "bisect",
    "record": "golden",
    "BisectReport": "bisect",
    "save": "io",
    "load": "io",
    "read_manifest": "io",
    "verify": "io",
    "stripped": "strip",
    "conversion_report": "report",
    "ConversionReport": "report",
    "register_converter": "registry",
    "HookwrapError": "errors",
    "InvalidArgumentError": "errors",
    "UnconvertibleHookError": "errors",
    "ManifestError": "errors",
    "ExportError": "errors",
    "ParityError": "errors",
}
_SUBMODULES = ("hooks", "wrappers", "errors", "registry")

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hookwrap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)


class _Package(types.ModuleType):
    """Keeps ``hw.inventory`` (and friends) the function when ``hookwrap.inventory``
    the submodule is imported: the import system sets the submodule as an attribute of
    the package, which would otherwise shadow the lazily loaded public name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import errors, hooks, registry, wrappers
    from .bisect import BisectReport, bisect
    from .convert import convert
    from .errors import (
        ExportError,
        HookwrapError,
        InvalidArgumentError,
        ManifestError,
        ParityError,
        UnconvertibleHookError,
    )
    from .export import ExportResult, export_onnx
    from .golden import record
    from .hooks import HookHandle, attach
    from .inventory import HookInfo, Inventory
    from .io import load, read_manifest, save, verify
    from .parity import ParityReport, assert_parity, check_parity
    from .plan import inventory
    from .registry import register_converter
    from .report import ConversionReport, conversion_report
    from .strip import strip, stripped
