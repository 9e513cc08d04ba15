"""The seed article, end to end: MC dropout after every Conv2d of vgg16, done with hooks.

The article adds ``F.dropout2d(output, p, True, False)`` after every ``Conv2d`` of a
torchvision vgg16 with ``model.apply(...)``. Because ``training=True`` is passed, dropout
stays on in eval mode (MC dropout). It then names the two costs of hooks: they are not
serializable, and PyTorch keeps no list of them. This script attaches, inspects,
converts, saves, reloads in a new process, exports to ONNX and runs statistical parity.

    python examples/seed_dropout.py           # the journey in Python
    hookwrap export examples/seed_dropout.py:build -o out/seed.onnx --check   # via the CLI

``build`` is the factory the command line uses: it returns the hooked model and an
example input.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import hookwrap as hw

OUT = Path(os.environ.get("HOOKWRAP_OUT", Path(__file__).resolve().parents[1] / "out"))


class DropoutHook:
    """The seed article's hook: a bound method that always drops (MC dropout)."""

    def __init__(self, prob: float = 0.2) -> None:
        self.prob = prob
        self.handles: list = []

    def register_hook(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            self.handles.append(module.register_forward_hook(self.dropout_hook))

    def dropout_hook(self, module: nn.Module, input: tuple, output: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(output, self.prob, True, False)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def build_vgg16(seed: int = 0) -> nn.Module:
    """vgg16 with random weights (no download), in eval mode."""
    torch.manual_seed(seed)
    return torchvision.models.vgg16(weights=None).eval()


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The seed's hooked vgg16 and a 32x32 example input (the CLI's factory)."""
    model = build_vgg16()
    model.apply(DropoutHook(prob=0.2).register_hook)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, (x,)


RELOAD = textwrap.dedent("""
    import sys, torch, torchvision
    import hookwrap as hw
    model = hw.load(sys.argv[1], base=lambda: torchvision.models.vgg16(weights=None))
    x = torch.load(sys.argv[2])
    torch.manual_seed(0)
    with torch.no_grad():
        torch.save(model.eval()(x), sys.argv[3])
""")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    model, (x,) = build()

    print("== 1. PyTorch keeps no list of hooks; hookwrap does ==")
    print(hw.inventory(model))
    with torch.no_grad():
        a, b = model(x), model(x)
    print(f"eval-mode outputs differ between two runs (MC dropout): {not torch.equal(a, b)}")

    print("\n== 2. The same hooks with hw.attach, one handle for all 13 convs ==")
    fresh = build_vgg16()
    handle = hw.attach(fresh, hw.hooks.Dropout2d(0.2, always=True), where=nn.Conv2d)
    print(f"{handle}: {len(handle)} hooks; handle.remove() undoes all of them")
    handle.remove()

    print("\n== 3. Convert the hooks into modules ==")
    converted = hw.convert(model, (x,))
    print(hw.conversion_report(converted))
    print(converted.features[:2])

    print("\n== 4. Save with safetensors, reload in a fresh process ==")
    path = OUT / "seed.safetensors"
    hw.save(converted, path)
    torch.save(x, OUT / "x.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(path), str(OUT / "x.pt"), str(OUT / "y.pt")], check=True)
    torch.manual_seed(0)
    with torch.no_grad():
        same = torch.equal(torch.load(OUT / "y.pt"), converted(x))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB); the reloaded model matches under the same seed: {same}")

    print("\n== 5. Export to ONNX and check statistical parity against the hooked model ==")
    result = hw.export_onnx(model, (x,), OUT / "seed.onnx", dynamic_batch=True)
    print(f"wrote {result.path}: opset {result.opset}, {result.nodes} nodes, random ops {result.random_ops}")
    report = hw.check_parity(model, result.path, (x,))
    for row in report.rows():
        print("  ".join(f"{cell:>12}" for cell in row))
    print(report.summary())
    sys.exit(0 if report and same else 1)


if __name__ == "__main__":
    main()
