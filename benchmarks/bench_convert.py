"""Issue 3, 13 and 16 figures: a converted model runs as fast as its hand-written
equivalent, and convert() on vgg16 is quick.

* eager latency ratio converted / hand-written, vgg16 at batch 1 (224x224) with the
  seed's DropoutHook (a Dropout2d after every Conv2d), limit 1.02 (issue 16): the ratio of
  the medians with a paired bootstrap interval (issue 28), and beside it the noise floor
  (a hand-written vgg16 against its twin) over as many rounds;
* the same on a 50-layer MLP (batch 1, a ReLU after every Linear) with a lambda
  ``o * 1.5`` hooked on every Linear, against a hand-written Linear, Mul, ReLU stack whose
  Linear layers share the converted model's weight tensors, so that only call overhead
  differs; limit 1.02. The gated MLP is 128 wide: its 3.2 MB of weights stay in the CPU's
  caches, so the figure measures the calls it is meant to gate, and each layer's 16 us make
  a wrapper's overhead 8 times as visible as at width 512. At width 512 the 50 MB of
  weights stream from memory on every call (8 GB/s here) and the ratio follows the memory
  system, not hookwrap: with both sides reading the same tensors it read 1.005 to 1.020
  between runs, and 0.968 at width 256; that figure is reported ungated, beside the
  hand-written MLP against its own copy at other addresses. The gated figure's noise
  floor is the hand-written MLP against a twin sharing its tensors, over as many rounds;
* wall time of hw.convert on the hooked vgg16 (example batch 1, 224x224): the first call
  in a process (the median over 7 fresh processes, with the min and max: one sample
  moved from 1.1 to 2.3 s with the machine's state) and the median of 7 calls in this
  process (the first of which is also its first), each with its bootstrap interval,
  limit 2 s; and the cost of convert's end-to-end check (issue 13): the median convert
  time with and without it.
Every ratio is the median of interleaved rounds, with its min and max.
"""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from _common import (
    emit,
    figure,
    interleaved_times,
    interval_figure,
    median_interval,
    ratio_interval,
    spread,
    timed,
)
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


VGG_ROUNDS = 81
MLP_WIDTH = 128  # weights that stay in cache: see the module docstring
MLP_ROUNDS = 121  # 0.8 ms calls: cheap rounds, and the interval needs them
MLP_WIDE, MLP_WIDE_ROUNDS = 512, 61  # the ungated, memory-bound figure


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


class Mul(nn.Module):
    """Hand-written ``x * factor``."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def hand_mlp(weights_of: nn.Module) -> nn.Module:
    """The hand-written MLP (Linear, Mul, ReLU, ...) sharing the Linear tensors of ``weights_of``."""
    layers: list[nn.Module] = []
    for layer in weights_of:
        if not isinstance(layer, nn.Linear):
            continue
        hand = nn.Linear(layer.in_features, layer.out_features)
        hand.weight, hand.bias = layer.weight, layer.bias
        layers += [hand, Mul(1.5), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def mlp(width: int = 512, depth: int = 50, hooked: bool = True) -> nn.Module:
    """50 Linear layers; hooked: a lambda ``o * 1.5`` on each and a ReLU module after it."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers.append(nn.Linear(width, width))
        if not hooked:
            layers.append(Mul(1.5))
        layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    if hooked:
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.register_forward_hook(lambda m, a, o: o * 1.5)
    return model


def convert_without_check(hooked: nn.Module, x: torch.Tensor) -> float:
    """convert's time without its end-to-end check (for the cost of the check only)."""
    convert_module = importlib.import_module("hookwrap.convert")  # the package re-exports a function of that name

    original = convert_module._probes  # the inputs the end-to-end check runs: none
    convert_module._probes = lambda *args, **kwargs: []
    try:
        return statistics.median(timed(lambda: hw.convert(hooked, (x,))) for _ in range(5))
    finally:
        convert_module._probes = original


FIRST_CALL_PROCESSES = 7
CONVERT_CALLS = 7


def hooked_vgg16() -> tuple[nn.Module, torch.Tensor]:
    """vgg16 with the seed's DropoutHook on every Conv2d, and a batch-1 example."""
    hooked = build("vgg16")
    hooked.apply(DropoutHook(0.2).register_hook)
    return hooked, torch.randn(1, 3, 224, 224)


def first_call() -> None:
    """In a fresh process: print the seconds of the first hw.convert call."""
    torch.set_grad_enabled(False)
    hooked, x = hooked_vgg16()
    print(json.dumps(timed(lambda: hw.convert(hooked, (x,)))))


def first_calls() -> list[float]:
    """The first convert call's seconds in each of FIRST_CALL_PROCESSES fresh processes."""
    return [json.loads(subprocess.run([sys.executable, __file__, "--first-call"], check=True, capture_output=True,
                                      text=True).stdout.splitlines()[-1])
            for _ in range(FIRST_CALL_PROCESSES)]


def main() -> None:
    colds = first_calls()
    torch.set_grad_enabled(False)
    hooked, x = hooked_vgg16()
    warms = [timed(lambda: hw.convert(hooked, (x,))) for _ in range(CONVERT_CALLS)]
    warm = statistics.median(warms)
    unchecked = convert_without_check(hooked, x)
    converted = hw.convert(hooked, (x,))
    hand = hand_vgg16(converted)
    vgg = ratio_interval(*interleaved_times(lambda: converted(x), lambda: hand(x), rounds=VGG_ROUNDS, inner=2))
    hand_twin = hand_vgg16(converted)  # the noise floor, with as many rounds as the figure
    vgg_floor = ratio_interval(*interleaved_times(lambda: hand_twin(x), lambda: hand(x), rounds=VGG_ROUNDS, inner=2))

    mlp_figures = {}
    for width, rounds, inner in ((MLP_WIDTH, MLP_ROUNDS, 200), (MLP_WIDE, MLP_WIDE_ROUNDS, 50)):
        xm = torch.randn(1, width)
        mlp_converted = hw.convert(mlp(width), (xm,))
        mlp_hand = hand_mlp(mlp_converted)
        # The gated width's floor is a twin sharing the tensors (the figure's own setting);
        # the wide one's is a copy at other addresses, which shows what placement alone does.
        mlp_twin = hand_mlp(mlp_converted) if width == MLP_WIDTH else mlp(width, hooked=False)
        mlp_figures[width] = [
            ratio_interval(*interleaved_times(lambda a=a, xm=xm: a(xm), lambda h=mlp_hand, xm=xm: h(xm), rounds=rounds,
                                              inner=inner))
            for a in (mlp_converted, mlp_twin)
        ]
    mlp_ratio, floor = mlp_figures[MLP_WIDTH]
    wide_ratio, wide_floor = mlp_figures[MLP_WIDE]

    emit("convert", [
        interval_figure("eager_latency_ratio_vgg16_b1", vgg, 1.02, baseline="hand-written vgg16 + Dropout2d",
                        candidate_ms=vgg["candidate_s"] * 1e3, baseline_ms=vgg["baseline_s"] * 1e3),
        interval_figure("eager_latency_ratio_vgg16_b1_noise_floor", vgg_floor, None,
                        baseline="a second hand-written vgg16 (same weights) against the first"),
        interval_figure("eager_latency_ratio_mlp50_b1", mlp_ratio, 1.02, width=MLP_WIDTH,
                        baseline="hand-written 50-layer MLP: Linear, Mul, ReLU",
                        candidate_us=mlp_ratio["candidate_s"] * 1e6, baseline_us=mlp_ratio["baseline_s"] * 1e6),
        interval_figure("eager_latency_ratio_mlp50_b1_noise_floor", floor, None, width=MLP_WIDTH,
                        baseline="a second hand-written MLP (same tensors) against the first"),
        interval_figure("eager_latency_ratio_mlp50_w512_b1", wide_ratio, None, width=MLP_WIDE,
                        note="memory-bound: follows the memory system, not hookwrap (see the module docstring)",
                        candidate_us=wide_ratio["candidate_s"] * 1e6, baseline_us=wide_ratio["baseline_s"] * 1e6),
        interval_figure("eager_latency_ratio_mlp50_w512_b1_noise_floor", wide_floor, None, width=MLP_WIDE,
                        baseline="the hand-written MLP against its own copy at other addresses"),
        interval_figure("convert_seconds_vgg16_first_call", median_interval(colds), 2.0, **spread(colds),
                        note="median over fresh processes of the first call in each"),
        interval_figure("convert_seconds_vgg16_median", median_interval(warms), 2.0, **spread(warms)),
        figure("convert_end_to_end_check_seconds_vgg16", warm - unchecked, None, convert_without_check_s=unchecked,
               note="the end-to-end check runs the converted model twice and the hooked one once more"),
    ])


if __name__ == "__main__":
    first_call() if sys.argv[1:] == ["--first-call"] else main()
