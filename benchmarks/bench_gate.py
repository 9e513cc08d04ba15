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
from _common import ROOT, emit, figure, interval_figure, ratio_interval, run_measured, spread
from helpers import requirement_closure
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
    return run_measured(argv, cwd, ok)[0]


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
    hw.record(model, example, folder / "g.npz", onnx=folder / "r18.onnx")  # as the CI recipes record it
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
    rss: dict[str, list[int]] = {k: [] for k in commands}
    for r in range(ROUNDS):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))
        for name in order:
            seconds, peak = run_measured(commands[name], folder)
            times[name].append(seconds)
            rss[name].append(peak)
    golden = [g / p for g, p in zip(times["golden"], times["polygraphy"])]
    reference = [g / p for g, p in zip(times["reference"], times["polygraphy"])]
    memory = [g / p for g, p in zip(rss["golden"], rss["polygraphy"])]
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    peak_mb = {k: round(statistics.median(v) / 1e6, 1) for k, v in rss.items()}
    return [
        interval_figure("gate_golden_time_ratio_vs_polygraphy_r18", ratio_interval(times["golden"], times["polygraphy"]),
                        1.0, per_round=spread(golden), seconds=medians),
        figure("gate_golden_peak_rss_ratio_vs_polygraphy_r18", statistics.median(memory), None, **spread(memory),
               peak_rss_mb=peak_mb),
        figure("check_reference_time_ratio_vs_polygraphy_r18", statistics.median(reference), None, **spread(reference),
               seconds=medians),
    ]


def _tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def install_figures(folder: Path) -> list[dict]:
    """The size of the torch-free gate (`pip install hookwrap`: the wheel and its plain
    dependencies, into a fresh venv, from the wheels make install keeps), against what the
    torch extra's torch and torchvision alone take in this venv."""
    from importlib import metadata

    dist = folder / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(dist), str(ROOT)], check=True, capture_output=True)
    venv = folder / "gate-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    empty = _tree_bytes(venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-index", "--find-links", str(ROOT / ".venv" / "gate-wheels"), *map(str, dist.glob("*.whl"))],
                   check=True, capture_output=True)
    gate = _tree_bytes(venv) - empty
    extra = requirement_closure(["torch", "torchvision", "onnxscript"]) - requirement_closure(metadata.requires("hookwrap") or [])
    extra_bytes = sum(path.stat().st_size for name in extra for file in metadata.distribution(name).files or []
                      if (path := Path(str(file.locate()))).is_file())
    return [figure("gate_install_mb", gate / 1e6, None, torch_extra_adds_mb=round(extra_bytes / 1e6, 1),
                   torch_extra_packages=len(extra))]


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
        figures = gate_figures(folder) + install_figures(folder) + statistical_figures(folder)
    emit("gate", figures)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
