"""The seed article, end to end: MC dropout after every Conv2d of vgg16, done with hooks.

The article adds ``F.dropout2d(output, p, True, False)`` after every ``Conv2d`` of a
torchvision vgg16 with ``model.apply(...)``. Because ``training=True`` is passed, the
dropout stays on in eval mode. It then names the two costs of hooks: they are not
serializable, and PyTorch keeps no list of them. This script shows what hookwrap does
about both.

Run it with ``make demo`` (or ``python examples/seed_dropout.py``).
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import hookwrap as hw


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


def main() -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    print("== 1. The seed: DropoutHook applied with model.apply ==")
    model = build_vgg16()
    seed_hook = DropoutHook(prob=0.2)
    model.apply(seed_hook.register_hook)
    with torch.no_grad():
        a, b = model(x), model(x)
    print(f"eval-mode outputs differ between two runs (MC dropout): {not torch.equal(a, b)}")

    print("\n== 2. PyTorch keeps no list of hooks; hookwrap does ==")
    print(hw.inventory(model))

    print("\n== 3. The same thing with hw.attach: one handle for all 13 convs ==")
    fresh = build_vgg16()
    handle = hw.attach(fresh, hw.hooks.Dropout2d(0.2, always=True), where=nn.Conv2d)
    print(f"{handle}: {len(handle)} hooks")
    handle.remove()
    print(f"after handle.remove(): {len(hw.inventory(fresh))} hooks left")

    print("\n== 4. Hooks are not serializable: lambdas break torch.save ==")
    lam = build_vgg16()
    lam.classifier[0].register_forward_hook(lambda m, i, o: o * 0.5)
    try:
        torch.save(lam, io.BytesIO())
        print("torch.save worked (unexpected)")
    except Exception as exc:  # pickling a lambda fails
        print(f"torch.save failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}")

    print("\n== 5. hw.stripped / hw.strip ==")
    with hw.stripped(model):
        with torch.no_grad():
            c, d = model(x), model(x)
        print(f"inside hw.stripped(): deterministic again: {torch.equal(c, d)}")
    print(f"after the block the same {len(hw.inventory(model))} hooks are back")
    plain = hw.strip(lam)
    buf = io.BytesIO()
    torch.save(plain, buf)
    print(f"hw.strip(model) saves with torch.save: {buf.tell() / 1e6:.0f} MB")
    print(hw.conversion_report(plain))


if __name__ == "__main__":
    main()
