"""Issue 7 figure: hw.bisect against torch.onnx.verification.verify_onnx_program(
compare_intermediates=True) on the same resnet18 (224x224, batch 1, hooks on 2 modules).

Both compare every intermediate value of the same exported model on the same input;
the export is not timed. Median of interleaved rounds; limit 0.1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
import torch.onnx.verification
from _common import emit, interval_figure, ratio_interval, timed
from helpers import build

import hookwrap as hw


def main() -> None:
    logging.disable(logging.WARNING)  # verify_onnx_program logs a line per node
    model = build("resnet18")
    model.layer2.register_forward_hook(hw.hooks.Scale(0.5))
    model.fc.register_forward_hook(lambda m, a, o: o * 2.0)
    x = torch.randn(1, 3, 224, 224)
    converted = hw.convert(model, (x,)).eval()
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        path = Path(tmp) / "r18.onnx"
        hw.export_onnx(model, (x,), path)
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(converted, (x,), dynamo=True, verbose=False)

        def baseline() -> None:
            with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                warnings.simplefilter("ignore")
                torch.onnx.verification.verify_onnx_program(program, args=(x,), compare_intermediates=True)

        def candidate() -> None:
            report = hw.bisect(model, path, (x,))
            assert report.first_divergent is None, report.summary()

        ours, theirs = [], []
        for r in range(3):
            pair = [(candidate, ours), (baseline, theirs)]
            for fn, sink in (pair if r % 2 == 0 else pair[::-1]):
                sink.append(timed(fn))
    emit("bisect", [interval_figure("bisect_time_ratio_vs_verify_onnx_program_resnet18", ratio_interval(ours, theirs),
                                    0.1, bisect_s=statistics.median(ours),
                                    verify_onnx_program_s=statistics.median(theirs))])


if __name__ == "__main__":
    main()
