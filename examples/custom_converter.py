"""Teach hookwrap a hook type of your own with ``hw.register_converter``.

A converter is tried before capture, needs no example inputs, and its wrapper type is
registered by name, so files naming it load again in any process that registers it.

    python examples/custom_converter.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

import hookwrap as hw
from hookwrap.wrappers import Wrapper


class Temperature:
    """A hook that divides logits by a temperature (a calibration step)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output / self.t


class TemperatureScale(Wrapper):
    """The module that stands for a Temperature hook."""

    kind = "example.TemperatureScale"

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = float(t)

    def _run(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        return x / self.t

    def config(self) -> dict:
        return {"t": self.t}

    def extra_repr(self) -> str:
        return f"t={self.t}"


def build() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    model[2].register_forward_hook(Temperature(1.5))
    return model


def main() -> None:
    hw.register_converter(Temperature, lambda hook, module: TemperatureScale(hook.t), wrapper=TemperatureScale)
    model = build()
    converted = hw.convert(model)  # no example inputs needed: the converter knows the hook
    print(converted)
    print(hw.conversion_report(converted))
    x = torch.randn(3, 16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calibrated.safetensors"
        hw.save(converted, path)
        print(hw.read_manifest(path)["wrappers"])
        loaded = hw.load(path, base=lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)))
        with torch.no_grad():
            print("reloaded model matches the hooked one:", torch.equal(loaded(x), model(x)))


if __name__ == "__main__":
    main()
