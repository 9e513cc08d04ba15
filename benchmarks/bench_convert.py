"""Issue 3 figures: a converted model runs as fast as its hand-written equivalent, and
convert() on vgg16 is quick.

* eager latency ratio converted / hand-written, vgg16 at batch 1 (224x224) with the
  seed's DropoutHook (a Dropout2d after every Conv2d), limit 1.03;
* the same on a 50-layer MLP (width 512, batch 1) with a hooked ReLU after every Linear;
  the hand-written sides share the converted model's weight tensors, so that only call
  overhead differs, and the MLP's noise floor (the hand MLP against a copy of itself) is
  reported beside it;
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


def hand_vgg16(weights_of: nn.Module) -> nn.Module:
    """vgg16 with a HandDropout2d after every Conv2d, sharing the tensors of ``weights_of``
    (whose state_dict keys are plain vgg16's): both sides then read the same memory, so
    the ratio measures call overhead and not where the allocator put the weights."""
    model = build("vgg16")
    model.load_state_dict(weights_of.state_dict(), assign=True)
    layers = []
    for layer in model.features:
        layers.append(layer)
        if isinstance(layer, nn.Conv2d):
            layers.append(HandDropout2d(0.2))
    model.features = nn.Sequential(*layers)
    return model.eval()


def hand_mlp(weights_of: nn.Module) -> nn.Module:
    """The hand-written MLP (Linear, ReLU, ...) sharing the Linear tensors of ``weights_of``."""
    layers: list[nn.Module] = []
    for layer in weights_of:
        hand = nn.Linear(layer.in_features, layer.out_features)
        hand.weight, hand.bias = layer.weight, layer.bias
        layers += [hand, nn.ReLU()]
    return nn.Sequential(*layers).eval()


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
    hand = hand_vgg16(converted)
    vgg = interleaved_ratio(lambda: converted(x), lambda: hand(x), rounds=41, inner=2)

    xm = torch.randn(1, 512)
    mlp_hooked = mlp()
    mlp_converted = hw.convert(mlp_hooked, (xm,))
    mlp_hand = hand_mlp(mlp_converted)
    mlp_ratio = interleaved_ratio(lambda: mlp_converted(xm), lambda: mlp_hand(xm), rounds=41, inner=50)
    # The same hand-written MLP against a copy of itself: the noise floor of this ratio
    # when the two sides' weights sit at different addresses (convert() returns a copy).
    mlp_copy = mlp(hooked=False)
    floor = interleaved_ratio(lambda: mlp_copy(xm), lambda: mlp_hand(xm), rounds=41, inner=50)

    emit("convert", [
        figure("eager_latency_ratio_vgg16_b1", vgg["ratio"], 1.03, baseline="hand-written vgg16 + Dropout2d",
               candidate_ms=vgg["candidate_s"] * 1e3, baseline_ms=vgg["baseline_s"] * 1e3),
        figure("eager_latency_ratio_mlp50_b1", mlp_ratio["ratio"], 1.03, baseline="hand-written 50-layer MLP + ReLU",
               candidate_us=mlp_ratio["candidate_s"] * 1e6, baseline_us=mlp_ratio["baseline_s"] * 1e6),
        figure("eager_latency_ratio_mlp50_b1_noise_floor", floor["ratio"], None,
               baseline="the hand-written MLP against its own copy at other addresses"),
        figure("convert_seconds_vgg16_first_call", cold, 2.0),
        figure("convert_seconds_vgg16_median", warm, 2.0),
    ])


if __name__ == "__main__":
    main()
