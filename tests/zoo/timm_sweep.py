"""timm, one architecture per family, swept through the whole hookwrap journey.

The rule: for every timm module (``timm.list_modules()``, e.g. ``resnet``, ``convnext``,
``vision_transformer``), the model of ``timm.list_models(module=...)`` with the fewest
parameters (counted on the meta device; ties by name), leaving out timm's own ``test_*``
models (tiny variants made for timm's unit tests) and modules whose smallest model has more
than 20 M parameters (``MAX_PARAMS``). Each is built with ``pretrained=False`` and run at the smallest square
input of ``SIZES`` (plus its default size) that it accepts with a batch of 2.

The journey is the torchvision sweep's (``tests/zoo/sweep.py``): attach
``Dropout2d(0.2, always=True)`` to every ``Conv2d`` (``Scale(0.5)`` to every ``Linear``
when there is no ``Conv2d``), convert, save, load (equal to the converted model under a
seed), the converted model against the hooked one at a second input size (``second_size``),
export (dynamo, dynamic batch; static batch if only that works, recorded as such)
and parity (statistical for stochastic models: 16 draws per side, the example and one input
at another batch size; exact ones with an atol scaled to the output, ``scaled_atol``).

Second journey, on the swept models with at most 3 M parameters (``FEATURES_MAX_PARAMS``)
whose ``features_only=True, feature_cls="hook"`` build installs FeatureHooks. timm's FeatureHooks store what they tap and ``forward`` returns it, so
``hw.convert`` must refuse them (``UnconvertibleHookError``); ``hw.export_onnx`` then exports
the hooked model itself (``result.converted`` False, the hooks in ``result.inline_hooks``)
and parity is checked on every feature map.

When export or parity fails, :func:`diagnose` exports the hooked model with the bare
``torch.onnx.export(model, (x,), dynamo=True)``, runs it in onnxruntime and checks its
parity, to tell hookwrap's failures from the exporter's. Each model runs under a timebox
(``TIMEBOX`` seconds, SIGALRM in the worker process). Used by ``benchmarks/bench_timm.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import hookwrap as hw
from hookwrap._diff import first_difference
from zoo.sweep import attach

MAX_PARAMS = 20_000_000
FEATURES_MAX_PARAMS = 3_000_000  # the features_only journey runs on the swept models up to this size
SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384)
SAMPLES = 16  # draws per side in the statistical parity check; random_inputs=1
TIMEBOX = 420  # seconds for one model's whole journey (both journeys and diagnoses)
SLOW_BUILD = 90  # seconds: a model whose build and input search take longer is skipped
DIAGNOSE_BOX = 150  # seconds for one diagnosis (bare export + onnxruntime + parity)


class Timeout(BaseException):  # noqa: N818 - a BaseException so that no `except Exception` swallows it
    """The model's timebox ran out."""


@dataclass
class Features:
    """The ``features_only=True, feature_cls="hook"`` journey of one model."""

    input: int | None = None
    runs: bool = True  # False when timm's own hooked feature model runs at no input size
    outputs: int = 0
    hooks: int = 0
    convert_refused: bool = False
    converted: bool | None = None
    inline_hooks: int = 0
    steps: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    failed_step: str | None = None
    reason: str = ""
    blame: str = ""
    note: str = ""


@dataclass
class Row:
    model: str
    family: str
    params_m: float
    input: int | None = None
    hooks: str = ""
    second_size: str = ""  # the converted model against the hooked one at another input size
    batch: str = ""  # "dynamic", or "static" when only a static batch exports
    steps: dict[str, float] = field(default_factory=dict)
    parity: str = ""
    passed: bool = False
    failed_step: str | None = None
    reason: str = ""
    blame: str = ""  # whose failure: "hookwrap", "exporter", "model", "timebox"
    notes: list[str] = field(default_factory=list)
    features: dict[str, Any] | None = None  # asdict(Features), None when features_only is unsupported
    seconds: float = 0.0  # wall time of both journeys
    cpu_seconds: float = 0.0  # CPU time of the worker process meanwhile (all its threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- choosing


def families() -> list[str]:
    import timm

    return sorted(timm.list_modules())


def members(family: str) -> list[str]:
    import timm

    return [n for n in timm.list_models(module=family) if not n.startswith("test_")]


def build(name: str, device: str = "cpu", seed: int = 0, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False)`` under a seed, in eval mode, quietly."""
    import timm

    with quiet():
        torch.manual_seed(seed)
        with torch.device(device):
            return timm.create_model(name, pretrained=False, **kwargs).eval()


class _SkipInPlaceOnMeta(TorchFunctionMode):
    """Skips in-place ops on meta tensors: weight initialisation (``trunc_normal_`` and
    friends), which is most of the time of building a model on the meta device and
    cannot change a parameter's shape."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor) \
                and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def count_params(name: str) -> int:
    try:
        with _SkipInPlaceOnMeta():
            model = build(name, "meta")
    except Exception:  # a builder that computes with tensors at construction
        model = build(name)
    return sum(p.numel() for p in model.parameters())


def pick(family: str) -> tuple[str, str, int | None, str]:
    """(family, chosen model, its parameter count, why it is left out: "" when kept)."""
    counts = []
    for name in members(family):
        try:
            counts.append((count_params(name), name))
        except Exception as exc:
            counts.append((1 << 62, f"{name} ({one_line(exc)[:80]})"))
    if not counts:
        return family, "", None, "only timm test_* models"
    n, name = min(counts)
    if n > MAX_PARAMS:
        return family, name, n, (f"smallest model {name} has {n / 1e6:.1f} M parameters, over the "
                                 f"{MAX_PARAMS / 1e6:.0f} M limit")
    return family, name, n, ""


# ----------------------------------------------------------------------------- helpers


def one_line(exc: BaseException) -> str:
    """The exception on one line; for a wrapped one (the exporter's), its root cause."""
    while exc.__cause__ is not None and not isinstance(exc, (hw.HookwrapError, AssertionError)):
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text[:300]}"


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" [{frames[-1].name}]" if frames else ""


@contextlib.contextmanager
def timebox(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` in this (main) thread after ``seconds``; nests (the inner box
    never outlives the outer one)."""

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    box = min(seconds, outer_left) if outer_left else seconds

    def ring(signum: int, frame: Any) -> None:
        raise Timeout(f"over the {box:.0f} s timebox")

    previous_handler = signal.signal(signal.SIGALRM, ring)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, box)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_left:  # re-arm the outer box; if it ran out meanwhile, it rings at once
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter prints graphs and tracebacks to stdout/stderr and logs at ERROR."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), \
                contextlib.redirect_stdout(devnull), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def timed(steps: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    try:
        return fn()
    finally:
        steps[name] = time.perf_counter() - start


def smallest_input(model: nn.Module, default: int | None = None) -> int:
    """The smallest square input of SIZES (and the model's default) it accepts (batch 2, eval)."""
    last: Exception | None = None
    for size in sorted({*SIZES, *([default] if default else [])}):
        try:
            with torch.no_grad(), quiet():
                model(torch.randn(2, 3, size, size))
            return size
        except Exception as exc:  # too small for the architecture, or a fixed size
            last = exc
    raise RuntimeError(f"no input size in {SIZES} works: {one_line(last) if last else ''}")


def default_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return int(size[-1]) if size else None


def tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def atol_for(model: nn.Module, x: torch.Tensor) -> float:
    """``scaled_atol`` of the smallest output: 1e-4 of its largest magnitude."""
    with torch.no_grad():
        outs = tensors(model(x))
    return 1e-4 * min(float(t.abs().max()) for t in outs)


def _parity(model: nn.Module, onnx_path: Path, x: torch.Tensor, atol: float, inputs: int = 2) -> Any:
    return hw.check_parity(model, onnx_path, (x,), samples=SAMPLES, random_inputs=inputs - 1, atol=atol)


def bare_export(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic_batch: bool) -> None:
    """``torch.onnx.export(model, (x,), dynamo=True)`` of the hooked model, without hookwrap."""
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},)
        if x.shape[0] == 1:
            x = torch.cat([x, x])
    with quiet():
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes)
        program.save(str(path))


def diagnose(model: nn.Module, x: torch.Tensor, folder: Path, atol: float, *, dynamic_batch: bool) -> tuple[str, str]:
    """(blame, finding): export the hooked model with the bare exporter, run it in
    onnxruntime and check parity. The exporter is to blame if any of that fails too;
    hookwrap is if the bare route works where hookwrap's did not."""
    import onnxruntime as ort

    path = folder / f"bare-{os.getpid()}.onnx"
    what = "dynamic-batch " if dynamic_batch else ""
    try:
        with timebox(DIAGNOSE_BOX):
            try:
                bare_export(model, x, path, dynamic_batch=dynamic_batch)
            except Exception as exc:
                finding = f"the bare {what}torch.onnx.export of the hooked model fails too: {one_line(exc)[:200]}"
                try:
                    bare_export(hw.strip(model), x, path, dynamic_batch=dynamic_batch)
                    finding += "; without hooks (hw.strip) it exports"
                except Exception:
                    finding += "; so does the model without any hook (hw.strip)"
                return "exporter", finding
            try:
                session = ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])
                session.run(None, {session.get_inputs()[0].name: x.numpy()})
            except Exception as exc:
                return "exporter", (f"the bare {what}export of the hooked model succeeds but onnxruntime cannot run "
                                    f"it: {one_line(exc)[:200]}")
            try:
                report = _parity(model, path, x, atol)
            except Exception as exc:
                return "unclear", f"the bare export runs in onnxruntime; its parity check raised {one_line(exc)[:200]}"
            if not report:
                return "exporter", (f"the bare {what}export of the hooked model runs in onnxruntime but fails parity "
                                    f"too: {' '.join(report.summary().split())[:200]}")
            return "hookwrap", f"the bare {what}export of the hooked model works and passes parity"
    except Timeout:
        return "unclear", "the diagnosis ran out of time"
    finally:
        for file in folder.glob(f"bare-{os.getpid()}.onnx*"):
            with contextlib.suppress(OSError):
                file.unlink()


def legacy_route(model: nn.Module, x: torch.Tensor, folder: Path, atol: float) -> str:
    """What hookwrap's other exporter (``exporter="legacy"``, dynamic batch) makes of the
    hooked model, which its ExportError suggests when the dynamo exporter fails."""
    path = folder / f"legacy-{os.getpid()}.onnx"
    try:
        with timebox(DIAGNOSE_BOX), quiet():
            hw.export_onnx(model, (x,), path, exporter="legacy", dynamic_batch=True)
            report = _parity(model, path, x, atol)
        if report:
            return f"hookwrap's exporter='legacy' exports it and passes parity ({report.mode})"
        return f"hookwrap's exporter='legacy' exports it but fails parity: {' '.join(report.summary().split())[:160]}"
    except Timeout:
        return "hookwrap's exporter='legacy' ran out of time"
    except Exception as exc:
        return f"hookwrap's exporter='legacy' fails too: {one_line(exc)[:160]}"
    finally:
        for file in folder.glob(f"legacy-{os.getpid()}.onnx*"):
            with contextlib.suppress(OSError):
                file.unlink()


# ----------------------------------------------------------------------------- journeys


def _journey(row: Row, name: str, folder: Path) -> None:
    state: dict[str, Any] = {"step": "build"}
    row.failed_step = None
    try:
        start = time.perf_counter()
        model = timed(row.steps, "build", lambda: build(name))
        state["step"] = "input size"
        row.input = smallest_input(model, default_size(model))
        if time.perf_counter() - start > SLOW_BUILD:
            raise TimeoutError(f"build and input search took {time.perf_counter() - start:.0f} s, over {SLOW_BUILD} s")
        row.hooks = attach(model)
        x = torch.randn(1, 3, row.input, row.input, generator=torch.Generator().manual_seed(1))
        example = (x,)
        atol = atol_for(model, x)
        state.update(model=model, x=x, atol=atol)

        state["step"] = "convert"
        converted = timed(row.steps, "convert", lambda: hw.convert(model, example))

        state["step"] = "second size"
        row.second_size = timed(row.steps, "second size", lambda: second_size(model, converted, row.input))

        state["step"] = "save"
        path = folder / f"{name}.safetensors"
        timed(row.steps, "save", lambda: hw.save(converted, path))

        state["step"] = "load"
        loaded = timed(row.steps, "load", lambda: hw.load(path, base=lambda: build(name, seed=7)))
        with torch.no_grad():
            torch.manual_seed(3)
            a = converted(x)
            torch.manual_seed(3)
            b = loaded(x)
        if not all(torch.equal(p, q) for p, q in zip(tensors(a), tensors(b), strict=True)):
            raise AssertionError("the loaded model differs from the converted one under the same seed")
        del loaded

        state["step"] = "export"
        onnx_path = folder / f"{name}.onnx"
        try:
            timed(row.steps, "export", lambda: hw.export_onnx(converted, example, onnx_path, dynamic_batch=True))
            row.batch = "dynamic"
        except hw.ExportError as exc:
            dynamic_error = one_line(exc)
            timed(row.steps, "export", lambda: hw.export_onnx(converted, example, onnx_path, dynamic_batch=False))
            row.batch = "static"
            blame, finding = diagnose(model, x, folder, atol, dynamic_batch=True)
            row.notes.append(f"dynamic batch fails ({dynamic_error[:200]}); {blame}: {finding}")

        state["step"] = "parity"
        report = timed(row.steps, "parity", lambda: _parity(model, onnx_path, x, atol))
        row.parity = report.mode
        if not report:
            raise AssertionError(" ".join(report.summary().split())[:400])
        row.passed = True
    except Timeout as exc:
        row.failed_step, row.reason, row.blame = state["step"], f"Timeout: {exc}", "timebox"
    except Exception as exc:
        row.failed_step = state["step"]
        row.reason = one_line(exc) + ("" if isinstance(exc, AssertionError) else _where(exc))
        if isinstance(exc, TimeoutError):  # too slow to build: skipped
            row.blame = "timebox"
        elif row.failed_step in ("build", "input size"):
            row.blame = "model"
        elif row.failed_step in ("export", "parity") and "model" in state:
            row.blame, finding = diagnose(state["model"], state["x"], folder, state["atol"],
                                          dynamic_batch=row.failed_step == "parity" and row.batch == "dynamic")
            row.notes.append(finding)
            if row.failed_step == "export":
                row.notes.append(legacy_route(state["model"], state["x"], folder, state["atol"]))
        else:
            row.blame = "hookwrap"
    finally:
        with contextlib.suppress(OSError):
            for file in folder.glob(f"{name}.*"):
                file.unlink()


def second_size(model: nn.Module, converted: nn.Module, size: int) -> str:
    """The converted model against the hooked one at a second input size (x2 up to 64, else
    +32), batch 3, both seeded alike; what the hooked model refuses is recorded, not failed."""
    other = size * 2 if size <= 64 else size + 32
    x = torch.randn(3, 3, other, other, generator=torch.Generator().manual_seed(5))
    try:
        with torch.no_grad(), quiet():
            torch.manual_seed(11)
            expected = model(x)
    except Exception as exc:
        return f"{other}: the model refuses it ({one_line(exc)[:80]})"
    with torch.no_grad():
        torch.manual_seed(11)
        got = converted(x)
    difference = first_difference(got, expected)
    if difference is not None:
        raise AssertionError(f"the converted model differs from the hooked model at {other}x{other}: {difference}")
    return f"{other}: equal"


def features_journey(name: str, folder: Path, size: int | None = None) -> Features | None:
    """The ``features_only=True, feature_cls="hook"`` journey; None if timm does not support it."""
    feats = Features()
    step = "build"
    model = x = None
    atol = 0.0
    try:
        try:
            model = timed(feats.steps, "build", lambda: build(name, features_only=True, feature_cls="hook"))
        except Exception:
            return None  # features_only (with hooks) is not supported by this architecture
        feats.hooks = len(hw.inventory(model).where(kind="forward"))
        if not feats.hooks:
            return None  # timm chose another feature class: nothing hooked
        step = "forward"
        try:
            feats.input = smallest_input(model, size or default_size(model))
        except RuntimeError:
            feats.runs = False  # timm's FeatureHookNet does not run this architecture: timm's failure
            raise
        x = torch.randn(1, 3, feats.input, feats.input, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            scales = [1e-4 * float(t.abs().max()) for t in tensors(model(x))]
        feats.outputs, atol = len(scales), min(scales)

        step = "convert"
        try:
            timed(feats.steps, "convert", lambda: hw.convert(model, (x,)))
        except hw.UnconvertibleHookError:
            feats.convert_refused = True
        else:
            raise AssertionError("hw.convert converted the FeatureHooks instead of raising UnconvertibleHookError")

        step = "export"
        onnx_path = folder / f"{name}.features.onnx"
        result = timed(feats.steps, "export", lambda: hw.export_onnx(model, (x,), onnx_path))
        feats.converted, feats.inline_hooks = result.converted, len(result.inline_hooks)
        if result.converted or not result.inline_hooks:
            raise AssertionError(f"export_onnx: converted={result.converted}, inline_hooks={len(result.inline_hooks)}"
                                 f" (expected False and > 0)")
        if len(result.output_names) != feats.outputs:
            raise AssertionError(f"{len(result.output_names)} ONNX outputs for {feats.outputs} feature maps")

        step = "parity"
        report = timed(feats.steps, "parity", lambda: _parity(model, onnx_path, x, atol))
        if not report:
            # One atol for all maps is the smallest map's: judge each map by its own size instead.
            own = [c for c in report.failures() if c.required_atol is None or c.nan_mismatch
                   or "infinities" in c.message or c.required_atol > scales[c.output_index]]
            if own:
                raise AssertionError(" ".join(report.summary().split())[:400])
            feats.note = (f"passes with each map's own scaled atol; with the smallest map's ({atol:.3g}) for all, "
                          f"{len(report.failures())} check(s) fail: {report.failures()[0].message[:160]}")
        feats.passed = True
    except Timeout as exc:
        feats.failed_step, feats.reason, feats.blame = step, f"Timeout: {exc}", "timebox"
    except Exception as exc:
        feats.failed_step = step
        feats.reason = one_line(exc) + ("" if isinstance(exc, AssertionError) else _where(exc))
        if step in ("export", "parity") and model is not None and x is not None:
            feats.blame, finding = diagnose(model, x, folder, atol, dynamic_batch=False)
            feats.reason += f" -- diagnosis: {finding}"
        else:
            feats.blame = "model" if step in ("build", "forward") else "hookwrap"
    finally:
        feats.steps = {k: round(v, 2) for k, v in feats.steps.items()}
        with contextlib.suppress(OSError):
            for file in folder.glob(f"{name}.features.*"):
                file.unlink()
    return feats


def sweep_one(name: str, family: str, params: int, folder: Path, *, features: bool = True,
              seconds: float = TIMEBOX) -> Row:
    """Both journeys of one model, within ``seconds`` (the features journey gets what is left)."""
    row = Row(model=name, family=family, params_m=round(params / 1e6, 2))
    folder.mkdir(parents=True, exist_ok=True)
    start, cpu = time.monotonic(), time.process_time()
    try:
        with timebox(seconds):
            _journey(row, name, folder)
    except Timeout as exc:  # rang between two steps
        row.failed_step, row.reason, row.blame = row.failed_step or "?", f"Timeout: {exc}", "timebox"
    if features and params <= FEATURES_MAX_PARAMS:
        left = seconds - (time.monotonic() - start)
        try:
            with timebox(max(left, 60.0)):
                found = features_journey(name, folder, row.input)
            row.features = asdict(found) if found else None
        except Timeout as exc:
            row.features = asdict(Features(failed_step="?", reason=f"Timeout: {exc}", blame="timebox"))
    row.steps = {k: round(v, 2) for k, v in row.steps.items()}
    row.seconds, row.cpu_seconds = round(time.monotonic() - start, 1), round(time.process_time() - cpu, 1)
    return row


# ----------------------------------------------------------------------------- tables


def _s(steps: dict[str, float], key: str) -> str:
    return f"{steps[key]:.1f}s" if key in steps else "-"


def result_of(row: Row) -> str:
    if row.passed:
        return "pass" if row.batch == "dynamic" else "pass (static batch)"
    return f"FAIL ({row.failed_step})"


def table(rows: list[Row]) -> str:
    cols = ["family", "model", "params", "input", "hooks", "result", "convert", "second size", "save", "load",
            "export", "parity", "blame", "reason / notes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        text = r.reason or (r.parity if r.passed else "")
        if r.notes:
            text = "; ".join([text, *r.notes]) if text else "; ".join(r.notes)
        lines.append("| " + " | ".join([
            r.family, r.model, f"{r.params_m}M", str(r.input or "-"), r.hooks, result_of(r),
            _s(r.steps, "convert"), (r.second_size or "-").replace("|", "\\|"),
            *[_s(r.steps, k) for k in ("save", "load", "export", "parity")],
            r.blame or "-", text.replace("|", "\\|"),
        ]) + " |")
    return "\n".join(lines)


def features_table(rows: list[Row]) -> str:
    cols = ["model", "input", "feature maps", "FeatureHooks", "convert refuses", "inline hooks", "result",
            "export", "parity", "blame", "reason"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        f = r.features
        if not f:
            continue
        lines.append("| " + " | ".join([
            r.model, str(f["input"] or "-"), str(f["outputs"]), str(f["hooks"]),
            "yes" if f["convert_refused"] else "no", str(f["inline_hooks"]),
            "pass" if f["passed"] else ("timm's model does not run" if not f["runs"] else f"FAIL ({f['failed_step']})"),
            _s(f["steps"], "export"), _s(f["steps"], "parity"), f["blame"] or "-",
            (f["reason"] or f["note"]).replace("|", "\\|"),
        ]) + " |")
    return "\n".join(lines)
