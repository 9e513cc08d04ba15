"""pytest plugin: parity tests for deployment CI in a few lines.

Installed with hookwrap (entry point ``pytest11``), it provides the fixture
``hookwrap_parity``::

    def test_onnx_matches_the_hooked_model(hookwrap_parity):
        model, example = build_model()                 # the original, hooked model
        hookwrap_parity(model, "model.onnx", example)  # fails the test if parity fails

    def test_onnx_matches_the_golden_file(hookwrap_parity):   # in an image without torch
        hookwrap_parity("golden.npz", "model.onnx")           # written by hookwrap record

The fixture returns the :class:`~hookwrap.ParityReport`. Its figures are attached to
the test with ``record_property``, so ``pytest --junitxml=report.xml`` carries them
(``hookwrap.passed``, ``hookwrap.mode``, and per check ``hookwrap.input<i>.<output>.max_abs_diff``
and friends, ``hookwrap.inputs_all.<output>.p_value`` for the pooled checks). Keyword
arguments go to :func:`hookwrap.check_parity`: ``atol={"logits": 1e-3, "*": 1e-5}`` sets
tolerances per output. Pass ``junit=path`` or ``json=path`` to also write hookwrap's own reports.
The plugin imports nothing heavy until the fixture is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


def _record(record_property: Callable[[str, object], None], report: Any) -> None:
    record_property("hookwrap.passed", report.passed)
    record_property("hookwrap.mode", report.mode)
    record_property("hookwrap.onnx", report.onnx)
    for check in report.checks:
        where = "inputs_all" if check.input < 0 else f"input{check.input}"  # a pooled check covers every input
        prefix = f"hookwrap.{where}.{check.output}"
        for key in ("passed", "max_abs_diff", "mean_abs_diff", "max_rel_diff", "mismatch_fraction",
                    "required_atol", "p_value"):
            value = getattr(check, key)
            if value is not None:
                record_property(f"{prefix}.{key}", value)


@pytest.fixture
def hookwrap_parity(record_property: Callable[[str, object], None]) -> Callable[..., Any]:
    """``check(model, onnx_path, inputs=None, *, strict=False, junit=None, json=None, **check_parity_kwargs)``:
    run :func:`hookwrap.check_parity`, record its figures, fail the test if parity fails
    (with ``strict=True``, also if the report has warnings, as ``hookwrap check --strict``)."""

    def check(model: Any, onnx_path: str | os.PathLike[str], inputs: Any = None, *, strict: bool = False,
              junit: str | os.PathLike[str] | None = None, json: str | os.PathLike[str] | None = None,
              **kwargs: Any) -> Any:
        import hookwrap as hw

        report = hw.check_parity(model, onnx_path, inputs, **kwargs)
        _record(record_property, report)
        if junit is not None:
            report.to_junit(junit)
        if json is not None:
            report.to_json(json)
        if not report or (strict and report.warnings):
            lines = [report.summary(), *report.notes, *(f"warning: {w}" for w in report.warnings)]
            lines += ["  ".join(row) for row in report.rows()]
            pytest.fail("\n".join(lines), pytrace=False)
        return report

    return check
