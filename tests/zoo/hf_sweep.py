"""Hugging Face transformers families, swept through the whole hookwrap journey.

Every family of ``libmodels.HF_FAMILIES`` plus the ones in ``EXTRA_FAMILIES`` below, each
built tiny from its config (hidden size 32, 2 layers, vocabulary 128, random weights) with
the library's default settings (``use_cache=True`` included), with the hooks LLM users
attach (``libmodels.hook_llm``: a steering closure on every block, a keyword pre-hook on the
first block, ``Scale(0.9)`` on every ``nn.Linear``). The journey:

1. convert: the converted model's logits equal the hooked model's (``torch.equal``);
2. save, and load in the same process onto a model built under another seed: equal logits;
3. export with the default config: a decoder returns its KV cache (``DynamicCache``), which
   no exporter can flatten, so ``hw.export_onnx`` must raise ``hw.ExportError`` naming it and
   the fix (``use_cache = False``), and the bare ``torch.onnx.export(model, inputs,
   dynamo=True)`` must fail too (that makes it the exporter's limit, not hookwrap's);
   encoders export as they are;
4. ``model.config.use_cache = False`` (same logits), export (dynamic batch) and parity on the
   logits with an atol scaled to their size (``scaled_atol``).

After convert, the converted model is also checked against the hooked one (issue 22), the
whole output compared: at a second sequence length (token ids 3 longer; vision models at
another image size, where the model accepts one), with ``output_hidden_states=True``, and
for decoders in greedy ``generate()`` of 8 new tokens with the KV cache (the loaded model
too). A size the hooked model itself refuses is recorded as such, not as a failure.

Used by ``benchmarks/bench_transformers.py``.
"""

from __future__ import annotations

import contextlib
import re
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from libmodels import DECODERS, HF_FAMILIES, greedy, hf_model, hook_llm, scaled_atol, token_ids
from torch import nn

import hookwrap as hw
from hookwrap._diff import first_difference
from hookwrap._torch import other_sizes
from zoo.timm_sweep import Timeout, quiet, timebox, timed

_L = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
# More families, in the same tiny shape: family -> (config class, model class, config, decoder?)
EXTRA_FAMILIES: dict[str, tuple[str, str, dict, bool]] = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(**_L, num_key_value_heads=2, head_dim=16), True),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(**_L, num_key_value_heads=2), True),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(**_L, num_key_value_heads=2, head_dim=16), True),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(**_L, num_key_value_heads=2), True),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(**_L, num_key_value_heads=2), True),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(**_L, num_key_value_heads=2, num_local_experts=4,
                                                             num_experts_per_tok=2), True),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=64),
             True),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(**_L, num_key_value_heads=2, head_dim=16), True),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(**_L, num_key_value_heads=2, num_experts=4,
                                                                num_experts_per_tok=2, moe_intermediate_size=32,
                                                                shared_expert_intermediate_size=32), True),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(**_L, num_key_value_heads=2), True),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(**_L, num_key_value_heads=2), True),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(hidden_size=32, num_layers=2, num_heads=2,
                                                          attention_types=[[["global", "local"], 1]],
                                                          max_position_embeddings=64, window_size=16), True),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(n_embd=32, n_layer=2, n_head=2,
                                                                      n_positions=64), True),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(**_L, max_position_embeddings=64), False),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", dict(dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                                                                     max_position_embeddings=64), False),
}
ALL_FAMILIES = [*HF_FAMILIES, *EXTRA_FAMILIES]
TIMEBOX = 150  # seconds for one family's journey (SIGALRM in the worker process)


@dataclass
class Row:
    family: str
    model: str = ""
    params_k: float = 0.0
    decoder: bool = False
    hooks: int = 0
    steps: dict[str, float] = field(default_factory=dict)
    default_export: str = ""  # what exporting with the default config did
    passed: bool = False
    failed_step: str | None = None
    reason: str = ""
    blame: str = ""  # whose failure: "hookwrap", "exporter", "model", "timebox"
    notes: list[str] = field(default_factory=list)  # the full messages behind default_export
    other_length: str = ""  # the converted model at a second sequence length (or image size)
    hidden_states: str = ""  # ... with output_hidden_states=True
    generation: str = ""  # ... greedy generate() of 8 tokens (decoders)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_decoder(family: str) -> bool:
    return family in DECODERS or (family in EXTRA_FAMILIES and EXTRA_FAMILIES[family][3])


def build(family: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny model of ``family`` with the library's defaults, random weights under ``seed``."""
    if family in HF_FAMILIES:
        return hf_model(family, seed, **overrides)
    import transformers

    transformers.logging.set_verbosity_error()
    config_name, model_name, tiny, _ = EXTRA_FAMILIES[family]
    extra = dict(vocab_size=128, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    config = getattr(transformers, config_name)(**{**extra, **tiny, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return getattr(transformers, model_name)(config).eval()


def logits(model: nn.Module, inputs: tuple) -> torch.Tensor:
    """The logits (for models without a head, the last hidden state)."""
    with torch.no_grad():
        out = model(*inputs)
    return out.logits if "logits" in out else out.last_hidden_state


def _same(converted: nn.Module, hooked: nn.Module, run: Any, what: str) -> None:
    difference = first_difference(run(converted), run(hooked))
    if difference is not None:
        raise AssertionError(f"the converted model differs from the hooked model {what}: {difference}")


def _call(inputs: tuple, **options: Any) -> Any:
    def run(model: nn.Module) -> Any:
        with torch.no_grad():
            return model(*inputs, **options)

    return run


def check_call_paths(row: Row, converted: nn.Module, model: nn.Module, inputs: tuple) -> None:
    """Issue 22's checks of the converted model against the hooked one, recorded in ``row``."""
    grown = other_sizes(inputs)[:1]
    if not grown:
        row.other_length = "-"
    else:
        bigger, change = grown[0]
        try:
            _call(bigger)(model)
        except Exception as exc:
            row.other_length = f"the model refuses {change.split(' ', 2)[-1]} ({one_line(exc)[:80]})"
        else:
            _same(converted, model, _call(bigger), f"at {change}")
            row.other_length = f"equal at {change.split(' ', 2)[-1]}"
    _same(converted, model, _call(inputs, output_hidden_states=True), "with output_hidden_states=True")
    with torch.no_grad():
        states = model(*inputs, output_hidden_states=True).hidden_states
    row.hidden_states = f"equal ({len(states)} states)"


def one_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:  # the exporter wraps the real error
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text[:300]}"


def bare_export_fails(model: nn.Module, inputs: tuple, path: Path) -> str:
    """'' if the bare ``torch.onnx.export(dynamo=True)`` of the hooked model works (and
    onnxruntime runs it), else what failed."""
    try:
        with quiet():
            program = torch.onnx.export(model, inputs, dynamo=True)
            program.save(str(path))
    except Exception as exc:
        return f"bare torch.onnx.export fails too: {one_line(exc)[:200]}"
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])
        session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})
    except Exception as exc:
        return f"the bare export succeeds but onnxruntime cannot run it: {one_line(exc)[:200]}"
    return ""


def _check_parity(model: nn.Module, path: Path, inputs: tuple, expected: torch.Tensor) -> None:
    report = hw.check_parity(model, path, inputs, atol=scaled_atol(expected))
    if not report:
        raise AssertionError(" ".join(report.summary().split())[:400])


def sweep_one(family: str, folder: Path, seconds: float = TIMEBOX) -> Row:
    row = Row(family=family, decoder=is_decoder(family))
    folder.mkdir(parents=True, exist_ok=True)
    step = "build"
    model: nn.Module | None = None
    inputs: tuple = ()
    try:
        with timebox(seconds):
            model = timed(row.steps, "build", lambda: hook_llm(build(family)))
            row.model = type(model).__name__
            row.params_k = round(sum(p.numel() for p in model.parameters()) / 1e3, 1)
            inventory = hw.inventory(model)
            row.hooks = len(inventory.where(kind="forward")) + len(inventory.where(kind="forward_pre"))
            inputs = token_ids(family)
            expected = logits(model, inputs)

            step = "convert"
            converted = timed(row.steps, "convert", lambda: hw.convert(model, inputs))
            if [h for h in hw.inventory(converted) if h.is_forward and not h.is_model_machinery]:
                raise AssertionError("the converted model still has forward hooks")
            if not torch.equal(logits(converted, inputs), expected):
                raise AssertionError("the converted model's logits differ from the hooked model's")

            step = "sizes and call options"
            timed(row.steps, "call paths", lambda: check_call_paths(row, converted, model, inputs))
            if row.decoder:
                step = "generate"
                prompt = (inputs[0][:, :5],)
                timed(row.steps, "generate", lambda: _same(converted, model, lambda m: greedy(m, *prompt),
                                                           "in greedy generation of 8 tokens"))

            step = "save"
            path = folder / f"{family}.safetensors"
            timed(row.steps, "save", lambda: hw.save(converted, path))

            step = "load"
            loaded = timed(row.steps, "load", lambda: hw.load(path, base=lambda: build(family, seed=3)))
            if not torch.equal(logits(loaded, inputs), expected):
                raise AssertionError("the loaded model's logits differ from the hooked model's")
            if row.decoder:
                step = "generate (loaded)"
                _same(loaded, model, lambda m: greedy(m, *prompt), "(loaded) in greedy generation of 8 tokens")
                tokens = greedy(model, *prompt)[0].shape[1] - prompt[0].shape[1]
                row.generation = f"equal ({tokens} tokens; converted and loaded)"
            else:
                row.generation = "-"
            del loaded

            step = "export (default config)"
            onnx_path = folder / f"{family}.onnx"
            try:
                timed(row.steps, "export default", lambda: hw.export_onnx(model, inputs, onnx_path,
                                                                          dynamic_batch=True))
            except hw.ExportError as exc:
                text = " ".join(str(exc).split())
                if not (row.decoder and "Cache" in text and "use_cache = False" in text):
                    raise
                bare = bare_export_fails(model, inputs, folder / f"{family}.bare.onnx")
                if not bare:
                    row.blame = "hookwrap"
                    raise AssertionError(f"hw.export_onnx refuses the KV cache output but the bare exporter "
                                         f"exports it and onnxruntime runs it ({text[:200]})") from exc
                cache = re.search(r"output\S* \((\w*Cache)\)", text)
                row.default_export = (f"ExportError: needs use_cache=False ({cache.group(1) if cache else 'a cache'}"
                                      f" output); bare exporter fails too")
                row.notes.append(f"{text[:300]}; {bare[:300]}")
            else:
                if row.decoder and getattr(model.config, "use_cache", False):
                    row.default_export = "exports (no cache in the output)"
                else:
                    row.default_export = "exports"
                step = "parity (default config)"
                timed(row.steps, "parity default", lambda: _check_parity(model, onnx_path, inputs, expected))

            step = "use_cache=False"
            if hasattr(model.config, "use_cache"):
                model.config.use_cache = False
            if not torch.equal(logits(model, inputs), expected):
                raise AssertionError("use_cache=False changes the logits")

            step = "export"
            result = timed(row.steps, "export", lambda: hw.export_onnx(model, inputs, onnx_path, dynamic_batch=True))
            if not result.converted:
                raise AssertionError(f"export_onnx did not convert the hooks: {result.notes}")

            step = "parity"
            timed(row.steps, "parity", lambda: _check_parity(model, onnx_path, inputs, expected))
            row.passed = True
    except Timeout as exc:
        row.failed_step, row.reason, row.blame = step, f"Timeout: {exc}", "timebox"
    except Exception as exc:
        row.failed_step = step
        frames = traceback.extract_tb(exc.__traceback__)
        row.reason = one_line(exc) + ("" if isinstance(exc, AssertionError) or not frames else f" [{frames[-1].name}]")
        if row.blame:
            pass
        elif step == "build":
            row.blame = "model"
        elif step.startswith(("export", "parity")) and model is not None:
            bare = bare_export_fails(model, inputs, folder / f"{family}.bare.onnx")
            row.blame = "exporter" if bare else "hookwrap"
            if bare:  # and the same model without any hook?
                plain = build(family, use_cache=getattr(model.config, "use_cache", None))
                plain_fails = bare_export_fails(plain, inputs, folder / f"{family}.bare.onnx")
                bare += "; so does the model without hooks" if plain_fails else "; without hooks it exports"
            row.reason += f" -- diagnosis: {bare or 'the bare export of the hooked model works in onnxruntime'}"
            if step == "export":  # the other exporter, which hookwrap's ExportError suggests
                try:
                    with quiet():
                        hw.export_onnx(model, inputs, folder / f"{family}.onnx", exporter="legacy", dynamic_batch=True)
                        _check_parity(model, folder / f"{family}.onnx", inputs, logits(model, inputs))
                    row.notes.append("hookwrap's exporter='legacy' exports it and passes parity")
                except Exception as exc:
                    row.notes.append(f"hookwrap's exporter='legacy' fails too: {one_line(exc)[:200]}")
        else:
            row.blame = "hookwrap"
    finally:
        row.steps = {k: round(v, 2) for k, v in row.steps.items()}
        with contextlib.suppress(OSError):
            for file in folder.glob(f"{family}.*"):
                file.unlink()
    return row


def table(rows: list[Row]) -> str:
    cols = ["family", "model", "params", "hooks", "result", "convert", "other length", "output_hidden_states",
            "generate", "save", "load", "default-config export", "export", "parity", "blame", "reason"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        s = r.steps
        lines.append("| " + " | ".join([
            r.family, r.model or "-", f"{r.params_k}k", str(r.hooks), "pass" if r.passed else f"FAIL ({r.failed_step})",
            f"{s['convert']:.1f}s" if "convert" in s else "-",
            (r.other_length or "-").replace("|", "\\|"), r.hidden_states or "-", r.generation or "-",
            *[f"{s[k]:.1f}s" if k in s else "-" for k in ("save", "load")],
            (r.default_export or "-") + (f" ({s['export default']:.1f}s)" if "export default" in s else ""),
            *[f"{s[k]:.1f}s" if k in s else "-" for k in ("export", "parity")],
            r.blame or "-", r.reason.replace("|", "\\|") or "-",
        ]) + " |")
    return "\n".join(lines)
