"""A parity test for a deployment repository: copy this file into your tests.

It checks that the ONNX file you are about to ship computes what your original, hooked
PyTorch model computes (statistically, for MC dropout). Run it with

    pytest examples/ci_parity_test.py --junitxml=parity-junit.xml

and the JUnit report carries hookwrap's figures as test properties. Point
``HOOKWRAP_ONNX`` at the file to check (default ``out/seed.onnx``, which ``make demo``
writes) and replace ``build_reference`` with however your code builds the model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ONNX = Path(os.environ.get("HOOKWRAP_ONNX", ROOT / "out" / "seed.onnx"))
WEIGHTS = os.environ.get("HOOKWRAP_WEIGHTS")  # optional: trained weights, a .safetensors file


def build_reference():
    """The model as trained: hooks and all. Replace with your own factory."""
    sys.path.insert(0, str(ROOT))
    from examples.seed_dropout import build

    return build()


@pytest.mark.skipif(not ONNX.exists(), reason=f"{ONNX} not found: export it first (make demo)")
def test_onnx_matches_the_hooked_model(hookwrap_parity):
    model, example = build_reference()
    report = hookwrap_parity(model, ONNX, example, weights=WEIGHTS)
    assert report.mode in ("exact", "statistical")
