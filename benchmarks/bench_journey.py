"""Issue 5 figures: the export-and-check journey costs little more than doing it bare.

For resnet18 and vgg16 (224x224, batch 1) with deterministic hooks on 5 modules:

* hookwrap: ``hw.export_onnx`` (convert a copy, export with dynamo, check) then
  ``hw.check_parity`` on 4 inputs (the example and 3 random ones);
* bare baseline, no hookwrap: ``torch.onnx.export(dynamo=True)`` of the hooked model,
  save, one onnxruntime session, and the same 4 eager and 4 onnxruntime runs.

Median over interleaved rounds (31 for resnet18, whose ~2.5 s journeys are dominated by the
exporter's noise; 11 for vgg16) of the wall-time ratio, with the min and max; limit 1.05
(issue 16). Garbage is collected before each timed journey (``_common.timed``), and the ratio
of the two sides' median seconds is reported beside it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import emit, interval_figure, ratio_interval, spread, timed
from helpers import build
from torch import nn

import hookwrap as hw


def hooked(name: str) -> nn.Module:
    model = build(name)
    layers = [p for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hw.attach(model, hw.hooks.Scale(0.9), where=layers[:2])
    hw.attach(model, hw.hooks.Clamp(-5.0, 5.0), where=layers[2:4])
    dict(model.named_modules())[layers[4]].register_forward_pre_hook(lambda m, a: (a[0] * 1.1,))
    return model


def bare(model: nn.Module, x: torch.Tensor, inputs: list[np.ndarray], path: Path) -> None:
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with torch.no_grad():
        for arr in inputs:
            ref = model(torch.from_numpy(arr)).numpy()
            got = session.run(None, {name: arr})[0]
            np.abs(ref - got).max()


def journey(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    hw.export_onnx(model, (x,), path)
    report = hw.check_parity(model, path, (x,))
    assert report, report.summary()


ROUNDS = {"resnet18": 31, "vgg16": 11}


def main() -> None:
    figures = []
    for name in ("resnet18", "vgg16"):
        model = hooked(name)
        x = torch.randn(1, 3, 224, 224)
        rng = np.random.default_rng(0)
        inputs = [x.numpy()] + [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(3)]
        with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
            a, b = Path(tmp) / "hw.onnx", Path(tmp) / "bare.onnx"
            journey(model, x, a)
            bare(model, x, inputs, b)
            ratios, t_hw, t_bare = [], [], []
            for r in range(ROUNDS[name]):
                runs = [("hw", lambda: journey(model, x, a)), ("bare", lambda: bare(model, x, inputs, b))]
                if r % 2:
                    runs.reverse()
                got = {}
                for label, fn in runs:
                    got[label] = timed(fn)
                t_hw.append(got["hw"])
                t_bare.append(got["bare"])
                ratios.append(got["hw"] / got["bare"])
        figures.append(interval_figure(f"journey_time_ratio_{name}", ratio_interval(t_hw, t_bare), 1.05,
                                       per_round=spread(ratios), hookwrap_s=statistics.median(t_hw),
                                       bare_s=statistics.median(t_bare)))
    emit("journey", figures)


if __name__ == "__main__":
    main()
