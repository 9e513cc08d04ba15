"""Issue 27: the peak memory of each step of the journey, each step alone in a fresh process.

The model is a stack of 4096-wide Linear layers (float32) of about 2 GB and 4 GB, with a
hookwrap ``Scale`` hook on the first layer and a lambda (``tanh``, captured as a graph) on
the last. Each step runs in its own process, started through a small launcher so that
its ``ru_maxrss`` is its own (``_common.run_measured``), and builds what it needs itself
(the model from a fixed seed, or the files the steps before it wrote):

* ``floor``: python with torch and hookwrap imported, nothing built (the fixed cost);
* ``inventory``, ``convert_inplace``, ``convert_copy``: the hooked model built, then the step;
* ``save``: built, converted in place, saved;
* ``verify``: the saved file checked against its digests (no model);
* ``load``: the saved file loaded into a base built on the meta device;
* ``export_onnx``: built, exported (dynamo);
* ``check_parity``: built, checked against the export;
* ``record``: built, a golden file recorded (bound to the export);
* ``check_golden``: ``hookwrap check --golden`` (no torch);
* ``baseline``: the same model without hooks, ``torch.onnx.export(dynamo=True)`` plus an
  onnxruntime session that runs it once (the bare journey, issue 27's anchor).

Each step's figure is its peak private memory (``RssAnon``, sampled every 10 ms) divided by
the model's size (its float32 bytes), with min/median/max over RUNS runs; beside it, the
exact peak RSS (``ru_maxrss``), which also counts file-backed pages: torch's own libraries
(``import torch`` alone is 0.66 GB of RSS with the CUDA wheel, nearly all of it mapped
``.so`` files) and the weights onnxruntime maps from the ONNX file's external data, which
are page cache the kernel can reclaim, shared with every other reader of the file.
Targets: every step but ``convert_copy`` at most 1.3 in private memory, and no step above
the baseline; the copying convert costs one more model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import ROOT, emit, figure, run_profiled

WIDTH = 4096
SIZES_GB = (2.0, 4.0)
RUNS = 3
TARGET = 1.3
STEPS = ("floor", "inventory", "convert_inplace", "convert_copy", "save", "verify", "load", "export_onnx",
         "check_parity", "record", "check_golden", "baseline")
UNGATED = {"floor", "convert_copy", "baseline"}
JOURNEY_GB = 10.0
JOURNEY = ("convert_inplace", "save", "verify", "load", "export_onnx", "check_parity")


def layers_for(gb: float) -> int:
    return max(1, round(gb * 1e9 / (WIDTH * (WIDTH + 1) * 4)))


def model_bytes(layers: int) -> int:
    return layers * WIDTH * (WIDTH + 1) * 4


def build(layers: int, *, hooks: bool = True, device: str = "cpu"):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    import hookwrap as hw

    torch.manual_seed(0)
    with torch.device(device):
        model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)]).eval()
    if hooks:
        model[0].register_forward_hook(hw.hooks.Scale(0.5))
        model[-1].register_forward_hook(lambda m, a, o: torch.tanh(o))
    return model


def example():  # type: ignore[no-untyped-def]
    import torch

    return (torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(1)),)


def step(name: str, layers: int, folder: Path) -> None:
    """One step, in this (fresh) process."""
    import torch

    import hookwrap as hw

    torch.set_grad_enabled(False)
    st, onnx, golden = folder / "m.safetensors", folder / "m.onnx", folder / "g.npz"
    if name == "floor":
        return
    if name == "verify":
        assert hw.verify(st)
        return
    if name == "load":
        model = hw.load(st, base=lambda: build(layers, hooks=False, device="meta"))
        model(*example())
        return
    if name == "baseline":
        import onnxruntime as ort

        model, x = build(layers, hooks=False), example()
        torch.onnx.export(model, x, str(folder / "bare.onnx"), dynamo=True, external_data=True)
        session = ort.InferenceSession(str(folder / "bare.onnx"), providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: x[0].numpy()})
        return
    model, x = build(layers), example()
    if name == "inventory":
        hw.inventory(model, x)
    elif name == "convert_inplace":
        hw.convert(model, x, inplace=True)
    elif name == "convert_copy":
        hw.convert(model, x)
    elif name == "save":
        hw.save(hw.convert(model, x, inplace=True), st)
    elif name == "export_onnx":
        hw.export_onnx(model, x, onnx)
    elif name == "check_parity":
        report = hw.check_parity(model, onnx, x)
        assert report, report.summary()
    elif name == "record":
        hw.record(model, x, golden, onnx=onnx)
    else:
        raise SystemExit(f"unknown step {name!r}")


def measure(gb: float, folder: Path) -> dict[str, tuple[float, int, dict[str, int]]]:
    """Every step once, in order (later steps read the files earlier ones wrote)."""
    layers = layers_for(gb)
    out = {}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for name in STEPS:
        if name == "check_golden":
            argv = [str(Path(sys.executable).parent / "hookwrap"), "check", str(folder / "m.onnx"), "--golden",
                    str(folder / "g.npz")]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--layers", str(layers),
                    "--folder", str(folder)]
        out[name] = run_profiled(argv, ROOT, env=env)
        seconds, peak, parts = out[name]
        print(f"  {gb:g} GB {name}: {peak / 1e9:.2f} GB peak ({parts['private'] / 1e9:.2f} private, "
              f"{parts['file'] / 1e9:.2f} file-backed), {seconds:.1f} s", file=sys.stderr)
    return out


def figures(runs: int = RUNS, sizes: tuple[float, ...] = SIZES_GB) -> list[dict]:
    result = []
    for gb in sizes:
        size = model_bytes(layers_for(gb))
        rounds: dict[str, list[tuple[float, int, dict[str, int]]]] = {name: [] for name in STEPS}
        for _ in range(runs):
            with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
                for name, value in measure(gb, Path(tmp)).items():
                    rounds[name].append(value)
        baseline = {kind: statistics.median(r[2][kind] for r in rounds["baseline"]) for kind in ("private", "file")}
        baseline_total = statistics.median(r[1] for r in rounds["baseline"])
        for name in STEPS:
            private = [r[2]["private"] / size for r in rounds[name]]
            total = [r[1] / size for r in rounds[name]]
            limit = None if name in UNGATED else TARGET
            result.append(figure(
                f"peak_private_over_model_{name}_{gb:g}gb", statistics.median(private), limit,
                min=round(min(private), 3), max=round(max(private), 3), rounds=len(private),
                model_gb=round(size / 1e9, 3),
                peak_rss_over_model=round(statistics.median(total), 3),
                peak_rss_min_max=[round(min(total), 3), round(max(total), 3)],
                peak_rss_gb=round(statistics.median(r[1] for r in rounds[name]) / 1e9, 3),
                private_gb=round(statistics.median(r[2]["private"] for r in rounds[name]) / 1e9, 3),
                file_backed_gb=round(statistics.median(r[2]["file"] for r in rounds[name]) / 1e9, 3),
                seconds=round(statistics.median(r[0] for r in rounds[name]), 1),
                under_baseline_private=statistics.median(r[2]["private"] for r in rounds[name]) <= baseline["private"],
                under_baseline_rss=statistics.median(r[1] for r in rounds[name]) <= baseline_total))
    return result


def journey(gb: float = JOURNEY_GB) -> list[dict]:
    """The big model through convert(inplace=True), save, verify, load, export_onnx and
    check_parity, each step in a fresh process, once: its time and memory."""
    layers, result = layers_for(gb), []
    size = model_bytes(layers)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        for name in JOURNEY:
            argv = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--layers", str(layers),
                    "--folder", tmp]
            seconds, peak, parts = run_profiled(argv, ROOT, env=env)
            print(f"  journey {gb:g} GB {name}: {peak / 1e9:.2f} GB peak ({parts['private'] / 1e9:.2f} private, "
                  f"{parts['file'] / 1e9:.2f} file-backed), {seconds:.1f} s", file=sys.stderr)
            result.append(figure(f"journey_{gb:g}gb_{name}_peak_private_over_model", parts["private"] / size,
                                 None if name == "convert_copy" else TARGET, model_gb=round(size / 1e9, 3),
                                 seconds=round(seconds, 1), peak_rss_gb=round(peak / 1e9, 2),
                                 private_gb=round(parts["private"] / 1e9, 2), file_backed_gb=round(parts["file"] / 1e9, 2)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--step")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--gb", type=float, action="append")
    parser.add_argument("--journey-gb", type=float, default=JOURNEY_GB, help="0 leaves the big journey out")
    args = parser.parse_args()
    if args.step:
        step(args.step, args.layers, args.folder)
        return
    big = journey(args.journey_gb) if args.journey_gb else []
    emit("memory", figures(args.runs, tuple(args.gb) if args.gb else SIZES_GB) + big)


if __name__ == "__main__":
    sys.exit(main())
