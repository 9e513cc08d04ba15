"""Bake pruning into the weights, then export: smaller files and fewer nodes.

``torch.nn.utils.prune`` keeps ``weight_orig`` and ``weight_mask`` and recomputes
``weight`` in a forward pre-hook. Exported as it is, the ONNX graph carries both tensors
and a ``Mul`` per pruned layer. hookwrap bakes the mask into the weight with PyTorch's
own ``prune.remove`` first.

    python examples/prune_and_export.py
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

import hookwrap as hw

OUT = Path(os.environ.get("HOOKWRAP_OUT", Path(__file__).resolve().parents[1] / "out"))


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """resnet18 with 50% L1 pruning on every conv (the CLI's factory)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            prune.l1_unstructured(module, "weight", amount=0.5)
    return model, (torch.randn(1, 3, 64, 64),)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    model, example = build()

    unbaked = OUT / "pruned_unbaked.onnx"
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, dynamo=True, verbose=False).save(str(unbaked))
    baked = hw.export_onnx(model, example, OUT / "pruned_baked.onnx")

    raw = onnx.load(str(unbaked))
    raw_counts = Counter(n.op_type for n in raw.graph.node)
    print(f"{'':28}{'file size':>12}{'nodes':>8}{'Mul':>6}{'initializers':>14}")
    print(f"{'pruned, exported as is':28}{unbaked.stat().st_size / 1e6:>10.1f}MB{len(raw.graph.node):>8}"
          f"{raw_counts.get('Mul', 0):>6}{len(raw.graph.initializer):>14}")
    print(f"{'pruned, baked by hookwrap':28}{baked.path.stat().st_size / 1e6:>10.1f}MB{baked.nodes:>8}"
          f"{baked.node_counts.get('Mul', 0):>6}{len(onnx.load(str(baked.path)).graph.initializer):>14}")
    print(f"baked: {len(baked.report.of('baked'))} pruned convs")
    report = hw.check_parity(model, baked.path, example)
    print(report.summary())


if __name__ == "__main__":
    main()
