"""Issue 3 figures: a converted model runs as fast as its hand-written equivalent, and
convert() on vgg16 is quick.

* eager latency ratio converted / hand-written, vgg16 at batch 1 (224x224) with the
  seed's DropoutHook (a Dropout2d after every Conv2d), limit 1.03;
* the same on a 50-layer MLP (width 512, batch 1) with a hooked ReLU after every Linear;
* wall time of hw.convert on the hooked vgg16 (example batch 1, 224x224): the first call
  in the process and the median of 5 more, limit 2 s.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from _common import emit, figure, interleaved_ratio, timed
from helpers import DropoutHook, build
from torch import nn

import hookwrap as hw


class HandDropout2d(nn.Module):
    """What a person would write by hand instead of the seed's hook."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(x, self.p, True, False)


def hand_vgg16() -> nn.Module:
    model = build("vgg16")
    layers = []
    for layer in model.features:
        layers.append(layer)
        if isinstance(layer, nn.Conv2d):
            layers.append(HandDropout2d(0.2))
    model.features = nn.Sequential(*layers)
    return model.eval()


def mlp(width: int = 512, depth: int = 50, hooked: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers.append(nn.Linear(width, width))
        if not hooked:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    if hooked:
        for layer in model:
            layer.register_forward_hook(lambda m, a, o: F.relu(o))
    return model


def main() -> None:
    torch.set_grad_enabled(False)
    x = torch.randn(1, 3, 224, 224)

    hooked = build("vgg16")
    seed_hook = DropoutHook(0.2)
    hooked.apply(seed_hook.register_hook)
    cold = timed(lambda: hw.convert(hooked, (x,)))
    warm = statistics.median(timed(lambda: hw.convert(hooked, (x,))) for _ in range(5))
    converted = hw.convert(hooked, (x,))
    vgg = interleaved_ratio(lambda: converted(x), lambda: hand_vgg16_model(x), rounds=25, inner=2)

    xm = torch.randn(1, 512)
    mlp_hooked = mlp()
    mlp_converted = hw.convert(mlp_hooked, (xm,))
    mlp_hand = mlp(hooked=False)
    mlp_ratio = interleaved_ratio(lambda: mlp_converted(xm), lambda: mlp_hand(xm), rounds=41, inner=50)

    emit("convert", [
        figure("eager_latency_ratio_vgg16_b1", vgg["ratio"], 1.03, baseline="hand-written vgg16 + Dropout2d",
               candidate_ms=vgg["candidate_s"] * 1e3, baseline_ms=vgg["baseline_s"] * 1e3),
        figure("eager_latency_ratio_mlp50_b1", mlp_ratio["ratio"], 1.03, baseline="hand-written 50-layer MLP + ReLU",
               candidate_us=mlp_ratio["candidate_s"] * 1e6, baseline_us=mlp_ratio["baseline_s"] * 1e6),
        figure("convert_seconds_vgg16_first_call", cold, 2.0),
        figure("convert_seconds_vgg16_median", warm, 2.0),
    ])


hand_vgg16_model = hand_vgg16()

if __name__ == "__main__":
    main()
