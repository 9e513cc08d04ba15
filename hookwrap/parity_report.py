"""The result of a parity check: one :class:`OutputCheck` per input and output, gathered
in a :class:`ParityReport` (truthy when parity holds) that writes JSON and JUnit XML.

JSON report schema (``ParityReport.to_dict()``)::

    {"passed": bool, "mode": "exact" | "statistical", "onnx": str, "atol": float,
     "rtol": float, "atol_per_output": {output: float}, "rtol_per_output": {output: float},
     "alpha": float | null, "samples": int | null, "seed": int,
     "stochastic_reference": bool, "random_ops": {op: count}, "seconds": float,
     "inputs": [{"index": int, "source": str, "shapes": [[int]], "dtypes": [str]}],
     "checks": [{"input": int, "output": str, "output_index": int, "mode": str,
                 "atol": float | null, "rtol": float | null,
                 "passed": bool, "message": str, "reference_shape": [int],
                 "onnx_shape": [int] | null, "reference_dtype": str, "onnx_dtype": str | null,
                 "max_abs_diff": float | null, "mean_abs_diff": float | null,
                 "max_rel_diff": float | null, "mismatch_fraction": float | null,
                 "required_atol": float | null, "nan_mismatch": int,
                 "p_value": float | null, "alpha_per_test": float | null,
                 "statistics": {name: float}}],
     "notes": [str], "warnings": [str], "reference": "model" | "golden", "summary": str,
     "reproduce": {"seed": int, "onnxruntime_seed": int, "samples": int | null,
                   "anchor": int | null, "seeding": int, "random_inputs": int | null,
                   "versions": {package: str | null}}}

A statistical check of several input sets adds, per output, one check with ``"input": -1``
(:data:`POOLED`): the mean tests over all sets together. ``reproduce`` holds what the
verdict depends on besides the model, the ONNX file and the inputs: the same values give
the same report, timings aside (``seconds``).

``warnings`` lists what makes a verdict weak (a check that could not fail, too few draws);
``hookwrap check --strict`` turns them into a failure. numpy only.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._fs import atomic_write_text, write_json
from .compare import Comparison, Measures

__all__ = ["write_error_reports", "OutputCheck", "ParityReport", "POOLED"]

POOLED = -1  # the ``input`` of a check that pools every input set of one output


@dataclass(frozen=True, kw_only=True)
class OutputCheck(Measures):
    """The comparison of one output for one input."""

    input: int
    output: str
    output_index: int
    mode: str
    passed: bool
    message: str
    reference_shape: list[int]
    onnx_shape: list[int] | None
    reference_dtype: str
    onnx_dtype: str | None
    atol: float | None = None
    rtol: float | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """``input[0].logits``, or ``inputs[all].logits`` for a pooled check."""
        return f"inputs[all].{self.output}" if self.input == POOLED else f"input[{self.input}].{self.output}"

    @classmethod
    def of(cls, comparison: Comparison, *, input: int, output: str, output_index: int, mode: str,  # noqa: A002
           reference: np.ndarray | None, onnx: np.ndarray | None, seconds: float, atol: float | None = None,
           rtol: float | None = None) -> OutputCheck:
        """The check of one output, from its :class:`~hookwrap.compare.Comparison`."""
        fields = {k: v for k, v in asdict(comparison).items() if k not in ("passed", "message")}
        return cls(input=input, output=output, output_index=output_index, mode=mode, passed=comparison.passed,
                   message=comparison.message, atol=atol, rtol=rtol,
                   reference_shape=list(reference.shape) if reference is not None else [],
                   onnx_shape=list(onnx.shape) if onnx is not None else None,
                   reference_dtype=str(reference.dtype) if reference is not None else "",
                   onnx_dtype=str(onnx.dtype) if onnx is not None else None, seconds=seconds, **fields)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("seconds")
        return {k: _json_number(v) for k, v in data.items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    return value


@dataclass
class ParityReport:
    """The result of :func:`check_parity`. Truthy if and only if every check passed."""

    passed: bool
    mode: str
    onnx: str
    atol: float
    rtol: float
    seed: int
    checks: list[OutputCheck]
    inputs: list[dict[str, Any]]
    stochastic_reference: bool
    random_ops: dict[str, int]
    alpha: float | None = None
    samples: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reference: str = "model"
    bisect: Any = None
    atol_per_output: dict[str, float] = field(default_factory=dict)
    rtol_per_output: dict[str, float] = field(default_factory=dict)
    reproduce: dict[str, Any] = field(default_factory=dict)
    tolerance_override: bool = False

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[OutputCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        n_in = len(self.inputs)
        n_out = len({c.output for c in self.checks if c.output_index >= 0})
        head = f"parity {'PASSED' if self.passed else 'FAILED'}: {n_in} input(s) x {n_out} output(s), {self.mode}"
        if self.mode == "exact":
            worst = max((c.max_abs_diff or 0.0 for c in self.checks), default=0.0)
            head += f", max |diff| {worst:.3g} (atol {self._tolerance('atol')}, rtol {self._tolerance('rtol')})"
        else:
            head += f", {self.samples} draws per side (alpha {self.alpha:g})"
        bad = self.failures()
        if bad:
            first = bad[0]
            where = "all inputs" if first.input == POOLED else f"input {first.input}"
            head += f"; first failure: {where}, output {first.output!r}: {first.message}"
        if self.warnings:
            head += f" ({len(self.warnings)} warning(s))"
        return head

    def _tolerance(self, name: str) -> str:
        per_output = getattr(self, f"{name}_per_output")
        extra = "".join(f", {k}={v:g}" for k, v in per_output.items())
        return f"{getattr(self, name):g}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "mode": self.mode, "onnx": self.onnx, "atol": self.atol, "rtol": self.rtol,
            "atol_per_output": dict(self.atol_per_output), "rtol_per_output": dict(self.rtol_per_output),
            "alpha": self.alpha, "samples": self.samples, "seed": self.seed,
            "stochastic_reference": self.stochastic_reference, "random_ops": dict(self.random_ops),
            "seconds": round(self.seconds, 3), "inputs": self.inputs,
            "checks": [c.to_dict() for c in self.checks], "notes": list(self.notes),
            "warnings": list(self.warnings), "reference": self.reference, "summary": self.summary(),
            "reproduce": self.reproduce, "tolerance_override": self.tolerance_override,
            **({"bisect": self.bisect.to_dict()} if self.bisect is not None else {}),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The report as JSON (schema in this module's docstring); written to ``path`` if given."""
        return write_json(self.to_dict(), path, indent)

    def to_junit(self, path: str | os.PathLike[str], *, suite: str = "hookwrap.parity") -> None:
        """Write JUnit XML: one testcase per input and output, a ``<failure>`` with the
        statistics for each failing one."""
        failures = len(self.failures())
        root = ET.Element("testsuites", name=suite, tests=str(len(self.checks)), failures=str(failures),
                          errors="0", time=f"{self.seconds:.3f}")
        ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(self.checks)), failures=str(failures),
                           errors="0", skipped="0", time=f"{self.seconds:.3f}")
        props = ET.SubElement(ts, "properties")
        for key in ("onnx", "mode", "atol", "rtol", "alpha", "samples", "seed", "reference"):
            ET.SubElement(props, "property", name=key, value=str(getattr(self, key)))
        for key in ("atol", "rtol"):
            for output, value in getattr(self, f"{key}_per_output").items():
                ET.SubElement(props, "property", name=f"{key}.{output}", value=str(value))
        for key, value in self.reproduce.items():
            if key != "versions" and value is not None:
                ET.SubElement(props, "property", name=f"reproduce.{key}", value=str(value))
        for i, warning in enumerate(self.warnings):
            ET.SubElement(props, "property", name=f"warning.{i}", value=warning)
        classname = f"{suite}.{Path(self.onnx).stem}"
        for check in self.checks:
            case = ET.SubElement(ts, "testcase", classname=classname,
                                 name=check.label, time=f"{check.seconds:.3f}")
            if not check.passed:
                failure = ET.SubElement(case, "failure", message=check.message, type="ParityMismatch")
                failure.text = "\n".join(
                    f"{k}: {v}" for k, v in check.to_dict().items() if k not in ("message", "passed")
                )
        ET.indent(root)
        atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")

    def rows(self) -> list[list[str]]:
        """Table rows for people (header first)."""
        if self.mode == "exact":
            rows = [["input", "output", "result", "max |diff|", "mean |diff|", "max rel", "mismatch", "needs atol"]]
            for c in self.checks:
                rows.append([str(c.input), c.output, "ok" if c.passed else "FAIL", _fmt(c.max_abs_diff),
                             _fmt(c.mean_abs_diff), _fmt(c.max_rel_diff), _pct(c.mismatch_fraction),
                             _fmt(c.required_atol)])
        else:
            rows = [["input", "output", "result", "min p", "alpha/test", "spread ratio", "|mean diff|"]]
            for c in self.checks:
                rows.append(["all" if c.input == POOLED else str(c.input), c.output, "ok" if c.passed else "FAIL",
                             _fmt(c.p_value),
                             _fmt(c.alpha_per_test), _fmt(c.statistics.get("spread_ratio")), _fmt(c.max_abs_diff)])
        return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def error_report(error: str, onnx: str) -> dict[str, Any]:
    """The JSON report of a check that could not run."""
    return {"passed": False, "error": error, "onnx": onnx, "checks": []}


def write_error_reports(error: str, *, onnx: str, json_path: str | os.PathLike[str] | None = None,
                        junit_path: str | os.PathLike[str] | None = None, suite: str = "hookwrap.parity") -> None:
    """The reports of a check that could not run (exit 2: bad input, a golden file for
    another model, an ONNX file onnxruntime refuses): JSON with ``"passed": false`` and
    ``"error"``, JUnit with one testcase holding an ``<error>``, so that CI report widgets
    show the cause."""
    if json_path is not None:
        write_json(error_report(error, onnx), json_path, 2)
    if junit_path is not None:
        root = ET.Element("testsuites", name=suite, tests="1", failures="0", errors="1", time="0.000")
        ts = ET.SubElement(root, "testsuite", name=suite, tests="1", failures="0", errors="1", skipped="0",
                           time="0.000")
        case = ET.SubElement(ts, "testcase", classname=f"{suite}.{Path(onnx).stem}", name="check", time="0.000")
        ET.SubElement(case, "error", message=error, type="CheckError").text = error
        ET.indent(root)
        atomic_write_text(junit_path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
