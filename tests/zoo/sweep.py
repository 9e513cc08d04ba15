"""The torchvision classification zoo, swept through the whole hookwrap journey.

For every classification model that builds with ``weights=None`` and has at most 150 M
parameters, at the smallest input size it accepts: attach ``Dropout2d(0.2, always=True)``
to every ``Conv2d`` (or ``Scale(0.5)`` to every ``Linear`` when it has no ``Conv2d``),
then convert, save, load, export (dynamo, dynamic batch) and check parity (statistical
for the stochastic ones: 16 draws per side, the example and one input at another batch
size). Used by ``tests/zoo/test_zoo.py`` (a few models) and ``benchmarks/bench_zoo.py``
(all of them).
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import hookwrap as hw

MAX_PARAMS = 150_000_000
SIZES = (32, 64, 96, 128, 160, 224, 299)
SAMPLES = 16  # draws per side in the statistical parity check; random_inputs=1


@dataclass
class Row:
    model: str
    params_m: float
    input: int | None = None
    hooks: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    parity: str = ""
    passed: bool = False
    failed_step: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build(name: str, device: str = "cpu", seed: int = 0) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        with torch.device(device):
            return torchvision.models.get_model(name, weights=None).eval()


def count_params(name: str) -> int:
    try:
        model = _build(name, "meta")
    except Exception:  # some builders compute with tensors at construction
        model = _build(name)
    return sum(p.numel() for p in model.parameters())


def plan(names: list[str] | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """(models to sweep with their parameter counts, models left out with the reason)."""
    keep, left_out = [], []
    for name in names or classification_models():
        n = count_params(name)
        if n > MAX_PARAMS:
            left_out.append((name, f"{n / 1e6:.0f} M parameters, over the 150 M limit"))
        else:
            keep.append((name, n))
    return keep, left_out


def smallest_input(model: nn.Module) -> int:
    """The smallest square input from SIZES that the model accepts (batch 2, eval)."""
    last: Exception | None = None
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.randn(2, 3, size, size))
            return size
        except Exception as exc:  # too small for the architecture
            last = exc
    raise RuntimeError(f"no input size in {SIZES} works: {last}")


def attach(model: nn.Module) -> str:
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        handle = hw.attach(model, hw.hooks.Dropout2d(0.2, always=True), where=nn.Conv2d)
        return f"Dropout2d(always) x{len(handle)}"
    handle = hw.attach(model, hw.hooks.Scale(0.5), where=nn.Linear)
    return f"Scale x{len(handle)}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def sweep_one(name: str, params: int, folder: Path, *, dynamic_batch: bool = True, inputs: int = 2) -> Row:
    row = Row(model=name, params_m=round(params / 1e6, 1))
    folder.mkdir(parents=True, exist_ok=True)
    step = "build"
    try:
        start = time.perf_counter()
        model = _build(name)
        row.steps["build"] = time.perf_counter() - start
        step = "input size"
        row.input = smallest_input(model)
        row.hooks = attach(model)
        x = torch.randn(1, 3, row.input, row.input, generator=torch.Generator().manual_seed(1))
        example = (x,)

        step = "convert"
        start = time.perf_counter()
        converted = hw.convert(model, example)
        row.steps["convert"] = time.perf_counter() - start

        step = "save"
        path = folder / f"{name}.safetensors"
        start = time.perf_counter()
        hw.save(converted, path)
        row.steps["save"] = time.perf_counter() - start

        step = "load"
        start = time.perf_counter()
        loaded = hw.load(path, base=lambda: _build(name, seed=7))
        row.steps["load"] = time.perf_counter() - start
        with torch.no_grad():
            torch.manual_seed(3)
            a = converted(x)
            torch.manual_seed(3)
            b = loaded(x)
        if not torch.equal(a, b):
            raise AssertionError("the loaded model differs from the converted one under the same seed")
        del loaded

        step = "export"
        onnx_path = folder / f"{name}.onnx"
        start = time.perf_counter()
        hw.export_onnx(converted, example, onnx_path, dynamic_batch=dynamic_batch)
        row.steps["export"] = time.perf_counter() - start

        step = "parity"
        start = time.perf_counter()
        report = hw.check_parity(model, onnx_path, example, samples=SAMPLES, random_inputs=inputs - 1)
        row.steps["parity"] = time.perf_counter() - start
        row.parity = report.mode
        if not report:
            raise AssertionError(report.summary())
        row.passed = True
    except Exception as exc:
        row.failed_step = step
        row.reason = _one_line(exc)
        row.reason += "" if isinstance(exc, AssertionError) else f" [{traceback.extract_tb(exc.__traceback__)[-1].name}]"
    finally:
        row.steps = {k: round(v, 2) for k, v in row.steps.items()}
        with contextlib.suppress(OSError):
            for file in folder.glob(f"{name}.*"):
                file.unlink()
    return row


def table(rows: list[Row]) -> str:
    cols = ["model", "params", "input", "result", "convert", "save", "load", "export", "parity", "reason"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        s = r.steps
        lines.append("| " + " | ".join([
            r.model, f"{r.params_m}M", str(r.input or "-"), "pass" if r.passed else f"FAIL ({r.failed_step})",
            *[f"{s[k]:.1f}s" if k in s else "-" for k in ("convert", "save", "load", "export", "parity")],
            r.reason or (r.parity if r.passed else ""),
        ]) + " |")
    return "\n".join(lines)
