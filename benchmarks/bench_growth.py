"""Issue 8: growth with model size and with hook count.

Model size: MLPs of 4096-wide Linear layers, about 0.25, 0.5, 1 and 2 GB of float32
weights, each in a fresh process: convert (a hook on the first and the last layer),
save, load, export (dynamo) and parity (4 inputs). Time per step and peak RSS per size;
the whole journey at 2 GB must take at most 2.3 times as long as at 1 GB, and fit in
24 GB.

Hook count: a 1000-layer MLP (width 8) with 10, 100 and 1000 hooks (half hookwrap
Scale hooks, half lambdas); median time of inventory and convert over 5 calls each. Going
from 100 to 1000 hooks must take at most 12 times as long (the ratio of medians, with its
bootstrap interval). The size figures are one run per size: budgets, with no interval.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, figure, interval_figure, ratio_interval, timed
from torch import nn

import hookwrap as hw

WIDTH = 4096
SIZES_GB = (0.25, 0.5, 1.0, 2.0)


def mlp(layers: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)]).eval()


def one_size(gb: float) -> dict:
    layers = max(1, round(gb * 1e9 / (WIDTH * (WIDTH + 1) * 4)))
    model = mlp(layers)
    model[0].register_forward_hook(hw.hooks.Scale(0.5))
    model[-1].register_forward_hook(lambda m, a, o: torch.tanh(o))
    base = mlp(layers)
    x = torch.randn(2, WIDTH)
    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        start = time.perf_counter()
        converted = hw.convert(model, (x,))
        steps["convert"] = time.perf_counter() - start
        start = time.perf_counter()
        hw.save(converted, Path(tmp) / "m.safetensors")
        steps["save"] = time.perf_counter() - start
        start = time.perf_counter()
        hw.load(Path(tmp) / "m.safetensors", base=base)
        steps["load"] = time.perf_counter() - start
        del base
        start = time.perf_counter()
        result = hw.export_onnx(converted, (x,), Path(tmp) / "m.onnx")
        steps["export"] = time.perf_counter() - start
        del converted
        start = time.perf_counter()
        report = hw.check_parity(model, Path(tmp) / "m.onnx", (x,))
        steps["parity"] = time.perf_counter() - start
        assert report, report.summary()
    bytes_ = sum(p.numel() * 4 for p in model.parameters())
    return {
        "gb": round(bytes_ / 1e9, 3), "layers": layers, "external_data": result.external_data,
        "steps": {k: round(v, 2) for k, v in steps.items()}, "total_s": round(sum(steps.values()), 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


HOOK_ROUNDS = 5


def hook_counts() -> dict[int, dict[str, list[float]]]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(1000)]).eval()
    x = torch.randn(2, 8)
    out = {}
    for n in (10, 100, 1000):
        handles = []
        for i, layer in enumerate(list(model)[:n]):
            hook = hw.hooks.Scale(1.01) if i % 2 else (lambda m, a, o: o * 0.99)
            handles.append(layer.register_forward_hook(hook))
        hw.convert(model, (x,))  # warm up
        out[n] = {
            "inventory": [timed(lambda: hw.inventory(model)) for _ in range(HOOK_ROUNDS)],
            "convert": [timed(lambda: hw.convert(model, (x,))) for _ in range(HOOK_ROUNDS)],
        }
        for handle in handles:
            handle.remove()
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(one_size(float(sys.argv[2]))))
        return
    sizes = {}
    for gb in SIZES_GB:
        proc = subprocess.run([sys.executable, __file__, "--one", str(gb)], capture_output=True, text=True, check=True)
        sizes[gb] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{gb} GB: {sizes[gb]}", file=sys.stderr, flush=True)
    hooks = hook_counts()
    figures = [
        figure(f"size_{gb}gb_journey_seconds", r["total_s"], None, **{k: v for k, v in r.items() if k != "total_s"})
        for gb, r in sizes.items()
    ]
    # One journey per size (a minute or more each): a budget with its margin, not an interval.
    figures.append(figure("size_growth_1gb_to_2gb_time_ratio", sizes[2.0]["total_s"] / sizes[1.0]["total_s"], 2.3,
                          interval=None, note="one run per size; linear growth would be 2.0"))
    figures.append(figure("size_2gb_peak_rss_gb", sizes[2.0]["peak_rss_gb"], 24.0, interval=None))
    for n, r in hooks.items():
        figures.append(figure(f"hooks_{n}_convert_seconds", statistics.median(r["convert"]), None,
                              inventory_s=round(statistics.median(r["inventory"]), 4)))
    for step in ("convert", "inventory"):
        figures.append(interval_figure(f"hooks_100_to_1000_{step}_time_ratio",
                                       ratio_interval(hooks[1000][step], hooks[100][step]), 12.0,
                                       note="rounds paired by order, not interleaved: 10 times the hooks"))
    emit("growth", figures)


if __name__ == "__main__":
    main()
