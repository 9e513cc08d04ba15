"""Issue 15 figures: the parity gate for deployment CI, which needs no torch.

Process wall time, median of interleaved rounds, on resnet18 (224x224, a hook on ``fc``):

* ``hookwrap check r18.onnx --golden g.npz`` against ``polygraphy run r18.onnx --onnxrt
  --load-inputs in.json --load-outputs out.json``, both checking the same 4 input sets
  (polygraphy's files are written by polygraphy itself): limit 1.0;
* ``hookwrap check r18.onnx --reference SPEC`` (imports torch, rebuilds the model) against
  the same polygraphy run: reported;
* the statistical golden check of the seed's MC-dropout vgg16 (13 Dropout2d hooks, 32x32,
  the default 256 draws per side): its median time on the default golden file (4 input
  sets), and, through ``record`` and ``check_parity`` themselves, its false alarms over
  SEEDS golden files of the example alone against the correct export (reported; the gated
  false-alarm rate, over 50 seeds at 4 input sets, and the detection rates of planted
  faults are bench_power.py's).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from _common import ROOT, emit, figure, spread
from torch import nn

import hookwrap as hw

ROUNDS = 11
SEEDS = 10
TIMED_SEEDS = 3
BIN = Path(sys.executable).parent

FACTORY = textwrap.dedent(f"""
    import sys, torch, torchvision
    sys.path.insert(0, {str(ROOT)!r})
    import hookwrap as hw
    def r18():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        model.fc.register_forward_hook(lambda m, a, o: o * 2.0)
        return model, (torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)),)
""")


def wall(argv: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return seconds


def polygraphy_files(folder: Path) -> None:
    """polygraphy's own input and output files: 4 iterations, like the golden file's 4 sets."""
    wall([str(BIN / "polygraphy"), "run", "r18.onnx", "--onnxrt", "--iterations", "4", "--save-inputs", "in.json",
          "--save-outputs", "out.json"], folder)


def gate_figures(folder: Path) -> list[dict]:
    (folder / "models.py").write_text(FACTORY)
    sys.path.insert(0, str(folder))
    from models import r18  # noqa: E402

    model, example = r18()
    hw.export_onnx(model, example, folder / "r18.onnx")
    hw.record(model, example, folder / "g.npz")
    polygraphy_files(folder)
    commands = {
        "golden": [str(BIN / "hookwrap"), "check", "r18.onnx", "--golden", "g.npz"],
        "reference": [str(BIN / "hookwrap"), "check", "r18.onnx", "--reference", "models.py:r18"],
        "polygraphy": [str(BIN / "polygraphy"), "run", "r18.onnx", "--onnxrt", "--load-inputs", "in.json",
                       "--load-outputs", "out.json"],
    }
    for argv in commands.values():
        wall(argv, folder)  # warm the page cache and the bytecode caches
    times: dict[str, list[float]] = {k: [] for k in commands}
    for r in range(ROUNDS):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))
        for name in order:
            times[name].append(wall(commands[name], folder))
    golden = [g / p for g, p in zip(times["golden"], times["polygraphy"])]
    reference = [g / p for g, p in zip(times["reference"], times["polygraphy"])]
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return [
        figure("gate_golden_time_ratio_vs_polygraphy_r18", statistics.median(golden), 1.0, **spread(golden),
               seconds=medians),
        figure("check_reference_time_ratio_vs_polygraphy_r18", statistics.median(reference), None, **spread(reference),
               seconds=medians),
    ]


def seed_model() -> tuple[nn.Module, tuple]:
    from examples.seed_dropout import build

    return build()


def statistical_figures(folder: Path) -> list[dict]:
    """The check's time on the gate's default golden file (the example and 3 random input
    sets, 256 draws each); the false alarms over SEEDS golden files of the example alone
    (each is 640 draws of vgg16, made as the product makes them)."""
    model, example = seed_model()
    onnx = folder / "seed.onnx"
    hw.export_onnx(model, example, onnx)
    golden = folder / "seed.npz"
    checks = []
    for seed in range(TIMED_SEEDS):
        hw.record(model, example, golden, seed=seed)
        start = time.perf_counter()
        report = hw.check_parity(golden, onnx)
        checks.append(time.perf_counter() - start)
        assert report and report.mode == "statistical", report.summary()
    timed_report = report
    failed = 0
    for seed in range(SEEDS):
        hw.record(model, example, golden, seed=seed, random_inputs=0)
        report = hw.check_parity(golden, onnx)
        assert report.mode == "statistical", report.summary()
        failed += not report
    return [
        figure("golden_statistical_check_seconds_seed_vgg16", statistics.median(checks), None, **spread(checks),
               samples=timed_report.samples, inputs=len(timed_report.inputs)),
        figure("golden_statistical_false_alarm_rate", failed / SEEDS, None, checks=SEEDS, false_alarms=failed,
               inputs_per_golden=len(report.inputs), alpha=report.alpha),
    ]


def main() -> None:
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = gate_figures(folder) + statistical_figures(folder)
    emit("gate", figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
