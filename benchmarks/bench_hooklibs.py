"""Issue 24: hooks from the libraries people use, each placed the way the library's own
docs show, through hookwrap's journey: inventory, convert (whole outputs equal to the
hooked model's, bit for bit), save, load onto a model built under another seed (equal
again), export (dynamo; the legacy exporter where only it can, as export_onnx's error
says), parity. When export fails, the hooked model goes through the bare
``torch.onnx.export(dynamo=True)``: blame *exporter* if that fails too, *hookwrap* if not.
Writes ``benchmarks/hooklibs.md`` and prints JSON figures.

    python benchmarks/bench_hooklibs.py
"""

from __future__ import annotations

import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import emit, figure  # first: it puts the project and tests/ on sys.path
from libmodels import hf_model, scaled_atol, tl_bridge, token_ids
from torch import nn

import hookwrap as hw
from hookwrap._diff import first_difference

HERE = Path(__file__).parent


@dataclass
class Idiom:
    library: str
    idiom: str
    build: Callable[[int], nn.Module]  # seed -> the hooked model (the base for load: seed 3, hooks stripped)
    inputs: tuple
    exporter: str = "dynamo"
    before_export: Callable[[nn.Module], None] = lambda m: None
    base: Callable[[], nn.Module] | None = None


@dataclass
class Row:
    library: str
    idiom: str
    hooks: str = ""
    steps: dict[str, str] = field(default_factory=dict)
    passed: bool = False
    blame: str = "-"
    reason: str = ""


def _steering(family: str) -> Callable[[int], nn.Module]:
    from steering_vectors import SteeringVector

    def build(seed: int) -> nn.Module:
        model = hf_model(family, seed=seed)
        gen = torch.Generator().manual_seed(0)
        vector = SteeringVector({0: torch.randn(32, generator=gen), 1: torch.randn(32, generator=gen)},
                                "decoder_block")
        vector.patch_activations(model, multiplier=2.0)  # what `with vector.apply(model):` does inside the block
        return model

    return build


def _tl(seed: int) -> nn.Module:
    bridge = tl_bridge(seed=seed)

    def ablate_head(z: torch.Tensor, hook: Any) -> None:
        z[:, :, 0] = 0.0

    offset = torch.randn(32, generator=torch.Generator().manual_seed(1))
    bridge.add_perma_hook("blocks.0.attn.hook_z", ablate_head)
    bridge.add_perma_hook("blocks.1.hook_out", lambda act, hook: act + offset)
    return bridge


def _peft(seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(hf_model("gpt2", seed=seed), LoraConfig(r=4, target_modules=["c_attn"], lora_alpha=8))
    model.enable_input_require_grads()
    vector = torch.randn(32, generator=torch.Generator().manual_seed(2))
    model.base_model.model.transformer.h[0].register_forward_hook(lambda m, a, o: o + vector)
    return model.eval()


def _small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def _captum(seed: int) -> nn.Module:
    from captum.attr import LayerGradCam

    model = _small_cnn(seed)
    model[2].register_forward_hook(lambda m, a, o: o * 1.25)
    before = len(hw.inventory(model))
    LayerGradCam(model, model[2]).attribute(torch.randn(2, 3, 12, 12), target=0)
    try:
        LayerGradCam(model, model[2]).attribute(torch.randn(2, 3, 2, 2), target=0)  # raises inside the forward
    except Exception:
        pass
    if len(hw.inventory(model)) != before:
        raise AssertionError("captum left hooks behind")
    return model


def _qat(fused: bool) -> Callable[[int], nn.Module]:
    import torch.ao.quantization as tq

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 5)).train()
        model.qconfig = tq.get_default_qat_qconfig("x86") if fused else \
            tq.QConfig(activation=tq.default_fake_quant, weight=tq.default_weight_fake_quant)
        model = tq.prepare_qat(model)
        x = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
        for _ in range(3):
            model(x)
        model.apply(tq.disable_observer)
        return model.eval()

    return build


def _ptq(seed: int) -> nn.Module:
    import torch.ao.quantization as tq

    model = _small_cnn(seed)
    model.qconfig = tq.get_default_qconfig("x86")
    return tq.prepare(model)


def _parametrized(seed: int) -> nn.Module:
    from torch.nn.utils import parametrizations

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4)).eval()
    parametrizations.weight_norm(model[0])
    parametrizations.spectral_norm(model[2])
    parametrizations.orthogonal(model[3])
    return model


def _no_cache(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def idioms() -> list[Idiom]:
    ids, image = token_ids("gpt2"), (torch.randn(2, 3, 12, 12),)
    return [
        Idiom("steering-vectors", "SteeringVector.apply on GPT-2 (writes into the block output in place)",
              _steering("gpt2"), ids, before_export=_no_cache),
        Idiom("steering-vectors", "SteeringVector.apply on Llama", _steering("llama"), token_ids("llama"),
              before_export=_no_cache),
        Idiom("TransformerLens", "TransformerBridge.add_perma_hook: in-place head ablation at hook_z, an offset "
                                 "at hook_out", _tl, ids, base=lambda: tl_bridge(seed=3)),
        Idiom("peft", "LoRA + enable_input_require_grads + a steering hook", _peft, ids, before_export=_no_cache),
        Idiom("captum", "LayerGradCam attributions (one raising), then a model hook", _captum, image),
        Idiom("torch.ao QAT", "prepare_qat (x86 default, fused fake quantization), frozen with disable_observer",
              _qat(True), image),
        Idiom("torch.ao QAT", "prepare_qat (plain FakeQuantize), frozen", _qat(False), image, exporter="legacy"),
        Idiom("torch.ao PTQ", "prepare (MinMax observers)", _ptq, image),
        Idiom("torch.nn.utils.parametrizations", "weight_norm, spectral_norm, orthogonal", _parametrized,
              (torch.randn(4, 16),)),
    ]


def _run(model: nn.Module, inputs: tuple) -> Any:
    with torch.no_grad():
        torch.manual_seed(0)
        return model(*inputs)


def _bare_export_fails(model: nn.Module, inputs: tuple) -> str:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, dynamo=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return ""


def journey(idiom: Idiom, folder: Path) -> Row:
    row = Row(idiom.library, idiom.idiom)
    step = "build"
    model: nn.Module | None = None
    try:
        start = time.perf_counter()
        model = idiom.build(0)
        inv = hw.inventory(model)
        row.hooks = ", ".join(f"{n} {p}" for p, n in sorted(inv.counts()["by_plan"].items()))
        expected = _run(model, idiom.inputs)
        step = "convert"
        converted = hw.convert(model, idiom.inputs)
        difference = first_difference(_run(converted, idiom.inputs), expected)
        if difference:
            raise AssertionError(f"the converted model differs: {difference}")
        row.steps["convert"] = "equal"
        step = "save"
        path = folder / "m.safetensors"
        hw.save(converted, path)
        step = "load"
        base = idiom.base or (lambda: hw.strip(idiom.build(3), inplace=True))
        loaded = hw.load(path, base=base)
        difference = first_difference(_run(loaded, idiom.inputs), expected)
        if difference:
            raise AssertionError(f"the loaded model differs: {difference}")
        row.steps["save, load"] = "equal"
        step = "export"
        idiom.before_export(model)
        reference = _run(model, idiom.inputs)
        top = reference if isinstance(reference, torch.Tensor) else getattr(reference, "logits", None)
        result = hw.export_onnx(model, idiom.inputs, folder / "m.onnx", exporter=idiom.exporter)  # type: ignore[arg-type]
        row.steps["export"] = f"{idiom.exporter}, {'converted' if result.converted else 'hooks inline'}"
        step = "parity"
        atol = scaled_atol(top) if isinstance(top, torch.Tensor) else 1e-4
        report = hw.check_parity(model, result.path, idiom.inputs, atol=max(atol, 1e-4))
        if not report:
            raise AssertionError(" ".join(report.summary().split())[:300])
        row.steps["parity"] = f"{report.mode}, max |diff| {max(c.max_abs_diff or 0 for c in report.checks):.2g}"
        row.passed = True
        row.reason = f"{time.perf_counter() - start:.1f} s"
    except Exception as exc:
        row.steps[step] = "FAIL"
        row.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        if step in ("export", "parity") and model is not None:
            bare = _bare_export_fails(model, idiom.inputs)
            row.blame = "exporter" if bare else "hookwrap"
            row.reason += f" -- bare torch.onnx.export: {bare or 'exports'}"
        else:
            row.blame = "hookwrap"
            row.reason += " [" + (traceback.extract_tb(exc.__traceback__)[-1].name or "") + "]"
    return row


def table(rows: list[Row]) -> str:
    cols = ["library", "idiom", "hooks (inventory plans)", "convert", "save, load", "export", "parity", "blame",
            "notes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join([r.library, r.idiom, r.hooks or "-",
                                        *[r.steps.get(k, "-") for k in ("convert", "save, load", "export", "parity")],
                                        r.blame, r.reason.replace("|", "\\|") or "-"]) + " |")
    return "\n".join(lines)


def main() -> None:
    start = time.perf_counter()
    rows = []
    for idiom in idioms():
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(journey(idiom, Path(tmp)))
        print(f"{rows[-1].library}: {'pass' if rows[-1].passed else 'FAIL'} {rows[-1].reason[:160]}", flush=True)
    seconds = time.perf_counter() - start
    failed = [r for r in rows if not r.passed]
    report = [
        "# Hooks from the libraries people use",
        "",
        f"{len(rows)} idioms, {len(rows) - len(failed)} through the whole journey, in {seconds / 60:.1f} minutes. "
        "Each library is used the way its own docs show; the models are tiny and built from configs (no "
        "downloads). The journey: inventory, convert (the converted model's whole output equal to the hooked "
        "model's, bit for bit), save, load onto a model built under another seed (equal again), export (the "
        "dynamo exporter; the legacy one where export_onnx's own error says that only it exports the model), "
        "parity against the hooked model. A failed export is retried with the bare torch.onnx.export: blame "
        "*exporter* if that fails too. Written by `benchmarks/bench_hooklibs.py` (make bench).",
        "",
        table(rows),
        "",
    ]
    (HERE / "hooklibs.md").write_text("\n".join(report))
    emit("hooklibs", [
        figure("hooklibs_idioms", len(rows), None),
        figure("hooklibs_failures_blamed_on_hookwrap", len([r for r in failed if r.blame == "hookwrap"]), 0,
               failed={r.idiom: r.reason for r in failed}),
        figure("hooklibs_minutes", seconds / 60, 10.0),
    ])


if __name__ == "__main__":
    main()
