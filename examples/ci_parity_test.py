"""A parity test for a deployment repository: copy this file into your tests.

It checks that the ONNX file you are about to ship computes what your original, hooked
PyTorch model computes (statistically, for MC dropout). Run it with

    pytest ci_parity_test.py -o junit_family=xunit1 --junitxml=parity-junit.xml

and the JUnit report carries hookwrap's figures as test properties (pytest writes test
properties only with ``junit_family=xunit1``; set it in your ``pytest.ini`` to keep the
command short). Set:

* ``HOOKWRAP_ONNX``: the ONNX file to check (default ``out/seed.onnx`` next to this
  repository's ``examples``, which ``make demo`` writes);
* ``HOOKWRAP_REFERENCE``: ``path/to/file.py:factory``, a factory returning ``(model,
  example_inputs)`` with the hooks attached (default: this folder's ``seed_dropout.py:build``);
* ``HOOKWRAP_WEIGHTS`` (optional): trained weights, a ``.safetensors`` file.

Without the ONNX file the test is skipped on a laptop and fails in CI (``CI`` set), so a
mistyped path can never turn the gate green.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ONNX = Path(os.environ.get("HOOKWRAP_ONNX", HERE.parent / "out" / "seed.onnx"))
REFERENCE = os.environ.get("HOOKWRAP_REFERENCE", f"{HERE / 'seed_dropout.py'}:build")
WEIGHTS = os.environ.get("HOOKWRAP_WEIGHTS")


def build_reference():
    """The model as trained, hooks and all, from ``HOOKWRAP_REFERENCE`` (a file, imported by
    its path: no package needs to be importable)."""
    path, _, factory = REFERENCE.rpartition(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None or not Path(path).is_file():
        pytest.fail(f"HOOKWRAP_REFERENCE={REFERENCE!r}: {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, factory)()


def test_onnx_matches_the_hooked_model(hookwrap_parity):
    if not ONNX.exists():
        message = f"{ONNX} not found: export it first (make demo), or set HOOKWRAP_ONNX"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    model, example = build_reference()
    report = hookwrap_parity(model, ONNX, example, weights=WEIGHTS)  # strict=True: warnings fail it too
    assert report.mode in ("exact", "statistical")
